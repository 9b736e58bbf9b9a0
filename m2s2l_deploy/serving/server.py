"""A real Triton Inference Server on this machine: PyTriton hosting our runner, or the shipped binary.

``nvidia-pytriton`` ships ``tritonserver`` and its Python backend. Two things this module takes care of
so users do not have to:

- **Loopback by default.** PyTriton and tritonserver bind every interface unless told otherwise; here
  HTTP, gRPC and metrics bind to ``host`` (default 127.0.0.1), and ``listening_addresses`` reads back
  what the server process really listens on (``/proc/net/tcp*``), so ``serve`` can say it.
- **The libpython trap.** The Python-backend stub for 3.11 links ``libpython3.11.so.1.0`` by name; the
  dynamic loader finds the system's copy (another 3.11 build) before this interpreter's, and model
  load fails with ``'_thread.RLock' object has no attribute '_recursion_count'``. ``backend_env`` puts
  the running interpreter's own ``LIBDIR`` first on ``LD_LIBRARY_PATH`` (and its ``bin`` first on
  ``PATH``, so the embedded interpreter finds this environment's packages).

``PyTritonServer`` serves a runner (PyTorch checkpoint or ONNX) under dynamic batching — the
``serve`` command. ``TritonServerProcess`` starts the shipped binary on a packaged repository
(``package --platform python``) for tests and benchmarks; it stops it on exit, also on errors.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import EXTRA, MODEL_NAME, require

LOOPBACK = "127.0.0.1"
_SHM_DIR = Path("/dev/shm")


# -- environment ---------------------------------------------------------------------------------
def interpreter_libdir() -> Path | None:
    """This interpreter's folder holding its shared libpython, or None (static build)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"
    if libdir and (Path(libdir) / soname).exists():
        return Path(libdir)
    return None


def pytriton_dist() -> tuple[Path, Path]:
    """(tritonserver folder shipped in the nvidia-pytriton wheel, its bundled libraries folder)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"a Triton server needs nvidia-pytriton, which ships tritonserver ({EXTRA})")
    root = Path(list(spec.submodule_search_locations)[0])
    dist = root / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise UserError(f"nvidia-pytriton at {root} has no tritonserver binary (reinstall it: {EXTRA})")
    return dist, root.parent / "nvidia_pytriton.libs"


def backend_env(base: dict | None = None) -> dict:
    """Environment for a tritonserver whose Python backend must run this interpreter (module docstring)."""
    env = dict(os.environ if base is None else base)
    paths = []
    libdir = interpreter_libdir()
    if libdir is not None:
        paths.append(str(libdir))
    with contextlib.suppress(UserError):
        libs = pytriton_dist()[1]
        if libs.is_dir():
            paths.append(str(libs))
    old = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p not in paths]
    env["LD_LIBRARY_PATH"] = ":".join(paths + old)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = ":".join([bindir] + [p for p in env.get("PATH", "").split(":") if p and p != bindir])
    return env


@contextlib.contextmanager
def _environ(env: dict):
    """Temporarily replace os.environ (PyTriton copies it when it starts tritonserver)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# -- ports and sockets ---------------------------------------------------------------------------
def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_host(host: str) -> None:
    try:
        socket.inet_aton(host)
    except OSError:
        raise UserError(f"--host must be an IPv4 address such as 127.0.0.1, got '{host}'") from None


def _check_port(port: int | None, what: str) -> None:
    if port is not None and not 1 <= port <= 65535:
        raise UserError(f"{what} must be between 1 and 65535, got {port}")


def _hex_to_ipv4(h: str) -> str:
    return socket.inet_ntoa(bytes.fromhex(h)[::-1])


def _hex_to_ipv6(h: str) -> str:
    raw = bytes.fromhex(h)
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by process ``pid`` (Linux /proc)."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    found = []
    for table, conv in (("/proc/net/tcp", _hex_to_ipv4), ("/proc/net/tcp6", _hex_to_ipv6)):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[3] == "0A" and cols[9] in inodes:
                    addr, port = cols[1].split(":")
                    found.append((conv(addr), int(port, 16)))
    return sorted(found)


# -- readiness -----------------------------------------------------------------------------------
def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Endpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def health_url(self) -> str:
        return f"{self.http_url}/v2/health/ready"

    @classmethod
    def choose(cls, host: str = LOOPBACK, http_port: int | None = None, grpc_port: int | None = None,
               metrics_port: int | None = None) -> "Endpoints":
        """Given ports, and free ones (chosen now) for the rest."""
        _check_host(host)
        for p, what in ((http_port, "--port"), (grpc_port, "--grpc-port"), (metrics_port, "--metrics-port")):
            _check_port(p, what)
        probe = host if host != "0.0.0.0" else LOOPBACK
        ports = [p or free_port(probe) for p in (http_port, grpc_port, metrics_port)]
        if len(set(ports)) != 3:
            raise UserError(f"HTTP, gRPC and metrics need three different ports, got {ports}")
        return cls(host, *ports)


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
            if _http_ok(self.endpoints.health_url, timeout=1.0):
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


# -- PyTriton: our runner behind Triton ------------------------------------------------------------
@dataclass
class ServedModel:
    """A runner factory plus what clients need to know about it."""

    make_runner: object           # () -> Runner; one per Triton model instance
    contract: dict
    threshold: float | None
    source: str


def served_model(checkpoint=None, onnx=None, threads: int | None = None) -> ServedModel:
    """--checkpoint (PyTorch runner) or --onnx (ONNX Runtime runner), checked now, built per instance."""
    if (checkpoint is None) == (onnx is None):
        raise UserError("give exactly one of --checkpoint RUN_DIR or --onnx FILE")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if onnx is not None:
        from ..runners.onnx_runner import OnnxRunner, resolve_onnx

        files = resolve_onnx(onnx)
        if "whole" not in files:
            raise UserError(f"{onnx} is a --split export; serve the whole-graph export (per-stream feature caches "
                            "do not survive dynamic batching across cameras)")
        probe = OnnxRunner(onnx, providers=["CPUExecutionProvider"], threads=1)
        meta = probe.metadata
        thr = meta.get("threshold")
        return ServedModel(lambda: OnnxRunner(onnx, threads=threads), probe.contract.to_dict(),
                           float(thr) if thr is not None else None, f"onnx:{onnx}")
    from ..model.checkpoint import load_checkpoint
    from ..runners.torch_runner import TorchRunner

    ckpt = load_checkpoint(checkpoint)

    def make():
        if threads:
            import torch
            torch.set_num_threads(threads)
        return TorchRunner(ckpt)
    return ServedModel(make, ckpt.contract.to_dict(), ckpt.threshold, f"checkpoint:{checkpoint}")


class PyTritonServer:
    """Triton Inference Server through PyTriton, hosting our runner with dynamic batching.

    Inputs/outputs mirror the ONNX contract: ``clip`` (batch, T, C, H, W) float32 in, ``score_map``,
    ``pred_frame``, ``pred_motion``, ``frame_score`` out. The model config carries the input contract
    and alert threshold as parameters (``m2s2l_contract``, ``m2s2l_threshold``), like a packaged one.
    """

    def __init__(self, model: ServedModel, endpoints: Endpoints | None = None, *, name: str = MODEL_NAME,
                 max_batch: int = 8, instances: int = 1, queue_delay_us: int = 500, log_verbose: int = 0):
        if not 1 <= max_batch <= 1024:
            raise UserError(f"--max-batch must be between 1 and 1024, got {max_batch}")
        if not 1 <= instances <= 64:
            raise UserError(f"--instances must be between 1 and 64, got {instances}")
        if not 0 <= queue_delay_us <= 10_000_000:
            raise UserError(f"--queue-delay-us must be between 0 and 10000000, got {queue_delay_us}")
        self.model, self.name = model, name
        self.endpoints = endpoints or Endpoints.choose()
        self.max_batch, self.instances, self.queue_delay_us = max_batch, instances, queue_delay_us
        self.log_verbose = log_verbose
        self.triton = None

    @property
    def access_token(self) -> str | None:
        """PyTriton guards statistics/model-repository endpoints with this token (header triton-access-token)."""
        return self.triton.get_access_token() if self.triton is not None else None

    def _infer_fn(self, runner):
        import numpy as np
        from pytriton.decorators import batch

        @batch
        def infer(clip):
            out = runner.infer(clip)
            return {k: np.ascontiguousarray(out[k], dtype=np.float32).reshape(len(clip), *self._shapes[k])
                    for k in self._shapes}
        return infer

    def start(self) -> "PyTritonServer":
        import numpy as np
        require("pytriton", "serve")
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        c = self.model.contract
        sample = (c["clip_len"], c["channels"], c["height"], c["width"])
        self._shapes = {"score_map": (1, c["height"], c["width"]),
                        "pred_frame": (c["channels"], c["height"], c["width"]),
                        "pred_motion": (c["channels"], c["height"], c["width"]),
                        "frame_score": (1,)}
        runners = [self.model.make_runner() for _ in range(self.instances)]
        e = self.endpoints
        cfg = TritonConfig(http_address=e.host, http_port=e.http_port, grpc_address=e.host, grpc_port=e.grpc_port,
                           metrics_address=e.host, metrics_port=e.metrics_port, allow_gpu_metrics=False,
                           strict_readiness=True, exit_timeout_secs=5, log_verbose=self.log_verbose)
        self.triton = Triton(config=cfg)
        try:
            self.triton.bind(
                model_name=self.name, infer_func=[self._infer_fn(r) for r in runners],
                inputs=[Tensor(name="clip", dtype=np.float32, shape=sample)],
                outputs=[Tensor(name=k, dtype=np.float32, shape=s) for k, s in self._shapes.items()],
                config=ModelConfig(max_batch_size=self.max_batch,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=self.queue_delay_us)))
            self._add_parameters()
            with _environ(backend_env()):
                self.triton.run()
        except BaseException:
            self.stop()
            raise
        return self

    def _add_parameters(self) -> None:
        """Put the contract and threshold into the generated config (PyTriton has no public hook for this)."""
        params = {"m2s2l_contract": json.dumps(self.model.contract, sort_keys=True), "m2s2l_source": self.model.source}
        if self.model.threshold is not None:
            params["m2s2l_threshold"] = repr(float(self.model.threshold))
        try:
            model = next(m for m in self.triton._model_manager.models if m.model_name == self.name)
            model._get_triton_model_config().backend_parameters.update(params)
        except (AttributeError, StopIteration) as e:
            raise RuntimeError(f"this nvidia-pytriton version does not expose model parameters as expected ({e})") from None

    def pids(self) -> list[int]:
        """The tritonserver process PyTriton started (child of this process), for socket checks."""
        return [p for p in _children(os.getpid()) if _comm(p) == "tritonserver"]

    def stop(self) -> None:
        triton, self.triton = self.triton, None
        if triton is not None:
            triton.stop()

    close = stop

    def serve_forever(self) -> None:
        """Block until Ctrl-C / SIGTERM or until the server dies, then stop it."""
        try:
            wait_for_signal(lambda: self.triton is not None and self.triton.is_alive())
        finally:
            self.stop()

    def __enter__(self) -> "PyTritonServer":
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
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


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                    out.append(int(entry))
    return out


def _comm(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""
