"""The environment a tritonserver needs to run this interpreter's Python backend.

The libpython trap: the Python-backend stub for 3.11 that nvidia-pytriton ships links
``libpython3.11.so.1.0`` by name; the dynamic loader finds the system's copy (another 3.11 build)
before this interpreter's, and model load fails with ``'_thread.RLock' object has no attribute
'_recursion_count'``. ``backend_env`` puts the running interpreter's own ``LIBDIR`` first on
``LD_LIBRARY_PATH`` (and its ``bin`` first on ``PATH``, so the embedded interpreter finds this
environment's packages). Users never have to set it themselves.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

from ..errors import UserError
from . import EXTRA


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
def replaced_environ(env: dict):
    """Temporarily replace os.environ (PyTriton copies it when it starts tritonserver)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
