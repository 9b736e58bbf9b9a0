"""The ``tritonserver`` binary shipped in nvidia-pytriton, run on a packaged model repository.

``TritonServerProcess`` starts it with the Python-backend environment (``environment``), explicit
loopback endpoints (``network``) and a death signal tied to the starting thread, waits until it is
ready, and stops it (SIGINT, then SIGKILL to its process group) on exit, also on errors.
``wait_for_signal`` blocks a foreground ``serve`` until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import UserError
from .environment import backend_env, pytriton_dist
from .network import Endpoints, http_ok

_SHM_DIR = Path("/dev/shm")


# -- the shipped tritonserver on a model repository ---------------------------------------------
def _death_signal():
    """A pre-exec hook: the child gets SIGTERM when the thread that started it ends (no orphaned server).

    libc is loaded here, in the parent: between fork and exec the child may only make the call.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def hook():
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    return hook


class TritonServerProcess:
    """The shipped ``tritonserver`` serving a model repository, as a context manager.

    Binds HTTP, gRPC and metrics to ``endpoints.host`` (loopback unless given), builds a backend folder
    holding the Python backend with this interpreter's stub, sets ``backend_env`` and waits until the
    server reports ready. ``stop`` sends SIGINT, then kills the process group after the exit timeout;
    ``start`` again reuses the same ports (a restart, as a camera client sees it). The server is
    also killed when the thread that started it ends, so start it from one that outlives it.
    """

    def __init__(self, repository, endpoints: Endpoints | None = None, *, workdir=None, log_verbose: int = 0,
                 exit_timeout_s: int = 5, start_timeout_s: float = 120.0):
        from .repository import read_config

        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise UserError(f"model repository {self.repository} does not exist")
        configs = sorted(self.repository.glob("*/config.pbtxt"))
        if not configs:
            raise UserError(f"{self.repository} holds no model (no */config.pbtxt); see `m2s2l-deploy package`")
        for c in configs:
            read_config(c)
        self.endpoints = endpoints or Endpoints.choose()
        self.log_verbose, self.exit_timeout_s, self.start_timeout_s = log_verbose, exit_timeout_s, start_timeout_s
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="m2s2l-triton-")) if workdir is None else Path(workdir)
        self.log_path = self.workdir / "tritonserver.log"
        self.shm_prefix = f"m2s2l{os.getpid()}x{secrets.token_hex(3)}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def _backends(self) -> Path:
        dist, _ = pytriton_dist()
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise UserError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
        py = self.workdir / "backends" / "python"
        py.mkdir(parents=True, exist_ok=True)
        for src in (dist / "backends" / "python" / "libtriton_python.so",
                    dist / "backends" / "python" / "triton_python_backend_utils.py", stub):
            dst = py / src.name
            if not dst.exists():
                dst.symlink_to(src)
        return self.workdir / "backends"

    def command(self) -> list[str]:
        dist, _ = pytriton_dist()
        e = self.endpoints
        return [str(dist / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                f"--backend-directory={self._backends()}",
                f"--http-address={e.host}", f"--http-port={e.http_port}",
                f"--grpc-address={e.host}", f"--grpc-port={e.grpc_port}",
                f"--metrics-address={e.host}", f"--metrics-port={e.metrics_port}",
                "--allow-gpu-metrics=false", "--exit-on-error=true", "--strict-readiness=true",
                "--disable-auto-complete-config", f"--exit-timeout-secs={self.exit_timeout_s}",
                f"--log-verbose={self.log_verbose}",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
                "--backend-config=python,shm-default-byte-size=4194304",
                "--backend-config=python,shm-growth-byte-size=1048576"]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def start(self) -> "TritonServerProcess":
        if self.running():
            raise RuntimeError(f"tritonserver is already running (pid {self.pid})")
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, env=backend_env(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_death_signal())
        self.starts += 1
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise UserError(f"tritonserver exited with code {code} while starting; log {self.log_path}:\n"
                                f"{self.log_tail()}")
            if http_ok(self.endpoints.health_url, timeout=1.0):
                return self
            time.sleep(0.2)
        self.stop()
        raise UserError(f"tritonserver was not ready after {self.start_timeout_s:.0f} s; log {self.log_path}:\n"
                        f"{self.log_tail()}")

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGINT (Triton finishes in-flight requests), then SIGKILL to the whole process group."""
        proc, self.proc = self.proc, None
        if proc is not None:
            timeout_s = self.exit_timeout_s + 10 if timeout_s is None else timeout_s
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)   # the group it leads: the server and its Python stubs
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=10)
        for leftover in _SHM_DIR.glob(f"{self.shm_prefix}*"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    def close(self) -> None:
        self.stop()
        if self._own_workdir:
            import shutil
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "TritonServerProcess":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def wait_for_signal(alive, poll_s: float = 0.5) -> bool:
    """Block while ``alive()`` until SIGINT or SIGTERM; True when a signal ended the wait.

    Both signals are handled explicitly: a server started in the background by a non-interactive
    shell inherits an ignored SIGINT, and Ctrl-C must still stop it.
    """
    stop = []

    def on_signal(signum, _frame):
        stop.append(signum)
    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop and alive():
            time.sleep(poll_s)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return bool(stop)
