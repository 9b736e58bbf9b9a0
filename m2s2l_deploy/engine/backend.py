"""Which TensorRT is here: full TensorRT (``import tensorrt``) or TensorRT-RTX
(``import tensorrt_rtx_bindings``), imported lazily, with the RTX wheel's library-name trap fixed.

Both expose the same API family (Builder, OnnxParser, IPluginV3, strongly typed networks), so the
rest of the engine package takes a ``Backend`` and uses ``backend.trt`` as the module.

The trap (docs/engines.md): the RTX wheel ships ``libtensorrt_rtx.so.1`` only; when the ONNX parser
meets a plugin node it opens ``libtensorrt_rtx.so`` and, failing, aborts the whole process. The
toolkit creates the missing link ``libtensorrt_rtx.so -> libtensorrt_rtx.so.1`` inside the
installed ``tensorrt_rtx_libs/`` folder itself, or fails with one line saying how to do it.

``M2S2L_HIDE_TENSORRT`` (comma-separated backend names, or ``all``) makes this module treat those
backends as not installed: tests use it to check the "backend missing" path on a machine that
has one.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..errors import UserError

BACKENDS = ("tensorrt", "tensorrt-rtx")
MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx_bindings"}
HIDE_ENV = "M2S2L_HIDE_TENSORRT"
INSTALL_HINT = "pip install 'm2s2l-deploy[tensorrt]'"
RTX_LIB = "libtensorrt_rtx.so"


@dataclass(frozen=True)
class Backend:
    """An imported TensorRT flavour: ``trt`` is the module, ``name`` one of BACKENDS."""

    name: str
    trt: ModuleType
    version: str

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt-rtx"

    @property
    def label(self) -> str:
        return f"{'TensorRT-RTX' if self.is_rtx else 'TensorRT'} {self.version}"


def _hidden() -> set[str]:
    raw = os.environ.get(HIDE_ENV, "")
    names = {n.strip().lower() for n in raw.split(",") if n.strip()}
    return set(BACKENDS) if "all" in names else names


def _import(name: str) -> ModuleType | None:
    if name in _hidden():
        return None
    try:
        return importlib.import_module(MODULES[name])
    except (ImportError, OSError):       # a bindings wheel without its libraries raises OSError
        return None


def available_backends() -> list[str]:
    """Backends importable here, in the order auto-detection tries them."""
    return [n for n in BACKENDS if _import(n) is not None]


def normalise_name(name: str | None) -> str | None:
    if name is None or str(name).strip().lower() in ("", "auto"):
        return None
    key = str(name).strip().lower().replace("_", "-")
    key = {"trt": "tensorrt", "rtx": "tensorrt-rtx", "tensorrt-rtx-bindings": "tensorrt-rtx"}.get(key, key)
    if key not in BACKENDS:
        raise UserError(f"unknown TensorRT backend '{name}' (choose tensorrt or tensorrt-rtx)")
    return key


def load_backend(name: str | None = None) -> Backend:
    """The named backend, or the first importable one (``tensorrt`` first); UserError if none."""
    wanted = normalise_name(name)
    for candidate in ([wanted] if wanted else list(BACKENDS)):
        module = _import(candidate)
        if module is None:
            continue
        backend = Backend(candidate, module, str(getattr(module, "__version__", "?")))
        if backend.is_rtx:
            ensure_rtx_library_link()
        return backend
    if wanted:
        raise UserError(f"TensorRT backend '{wanted}' is not installed ({INSTALL_HINT}; the module is "
                        f"`{MODULES[wanted]}`)")
    raise UserError(f"no TensorRT backend is installed ({INSTALL_HINT} installs TensorRT-RTX, which builds "
                    "engines on a CPU-only machine; full TensorRT is `tensorrt`)")


def rtx_libs_dir() -> Path | None:
    try:
        libs = importlib.import_module("tensorrt_rtx_libs")
    except ImportError:
        return None
    paths = list(getattr(libs, "__path__", []))
    return Path(paths[0]) if paths else None


def ensure_rtx_library_link(libs_dir: Path | None = None) -> Path | None:
    """Create ``libtensorrt_rtx.so -> libtensorrt_rtx.so.1`` in the RTX libs folder if missing.

    Returns the link's path (None when there is no such folder, e.g. a system install). Without it
    the ONNX parser aborts the process on the first plugin node, so this runs before any parse.
    """
    libs_dir = Path(libs_dir) if libs_dir is not None else rtx_libs_dir()
    if libs_dir is None:
        return None
    link, target = libs_dir / RTX_LIB, libs_dir / f"{RTX_LIB}.1"
    if link.exists() or not target.exists():
        return link if link.exists() else None
    if link.is_symlink():                                # dangling: replace it
        try:
            link.unlink()
        except OSError:
            pass
    try:
        os.symlink(target.name, link)
    except FileExistsError:                              # another process made it meanwhile
        pass
    except OSError as e:
        raise UserError(f"TensorRT-RTX needs {link} (a link to {target.name}) and {libs_dir} is not writable "
                        f"({e.strerror or e}): run `ln -s {target.name} {link}` once as its owner") from None
    return link
