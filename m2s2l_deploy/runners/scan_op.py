"""The plugin form's ``ai.onnx.contrib::SelectiveScan`` node run by a compiled kernel inside ONNX Runtime.

Why: the ``plugin`` export carries each selective scan as one custom node (the node TensorRT's
plugin takes) plus an ONNX function body that stock ONNX Runtime runs step by step through a
``Loop``. On a CPU that loop is where the time goes; registering a Python op of the node's name
with onnxruntime-extensions lets ORT hand the whole scan to one compiled call instead:

- ``numba`` (preferred): ``ops.kernels.scan_numba_forward``, NumPy + Numba only, so a deployment
  that serves the ONNX file never imports torch;
- ``torch``: PyTorch's CPU form, when Numba is missing but torch is there.

onnxruntime-extensions' stock bridge hands each output back to C++ as a Python list (``tolist``:
measured 228 ms for 3 M floats, against 4 ms as an array), which would cost more than the scan
saves; so ``register`` also installs a bridge hook that returns this op's output as a contiguous
float32 array (the C++ side accepts any buffer) and leaves every other Python op to the stock hook.
One registration per process; ``op.calls`` counts invocations (tests tell it ran instead of the
function body), ``op.kernel`` names what computes.
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager

import numpy as np

from ..errors import UserError

KERNELS = ("numba", "torch")
_OP = None
_CALLER = threading.local()      # the thread count of the runner whose session.run is on this thread


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def extensions_available() -> bool:
    return _importable("onnxruntime_extensions")


def _has_torch_scan() -> bool:
    """torch and this package's PyTorch scan forms (absent from the runtime vendored into a Triton repository)."""
    import importlib.util
    return _importable("torch") and importlib.util.find_spec(f"{__package__.rsplit('.', 1)[0]}.ops.scan") is not None


def available_kernel() -> str | None:
    """The kernel ``register`` would use here: numba, torch, or None (no onnxruntime-extensions, or neither)."""
    if not extensions_available():
        return None
    if _importable("numba"):
        return "numba"
    return "torch" if _has_torch_scan() else None


def _numba_scan():
    from ..ops.kernels.scan_numba_forward import selective_scan_forward

    def scan(u, delta, A, B, C, D, delta_bias, softplus):
        return selective_scan_forward(u, delta, A, B, C, D, delta_bias, softplus,
                                      threads=getattr(_CALLER, "threads", None))
    return scan


def _torch_scan():
    import torch

    from ..ops.scan import selective_scan_cpu

    def scan(u, delta, A, B, C, D, delta_bias, softplus):
        t = [torch.from_numpy(np.ascontiguousarray(x)) for x in (u, delta, A, B, C, D, delta_bias)]
        with torch.inference_mode():
            return selective_scan_cpu(*t[:5], t[5], None, t[6], softplus).numpy()
    return scan


def register(kernel: str | None = None):
    """Register the SelectiveScan op once per process and return it (``kernel``: numba | torch;
    None = ``available_kernel()``). A second call returns the op already registered."""
    global _OP
    if _OP is not None:
        return _OP
    if not extensions_available():
        raise UserError("onnxruntime-extensions is not installed (pip install onnxruntime-extensions); "
                        "without it the plugin node runs through its ONNX function body")
    kernel = kernel or available_kernel()
    if kernel not in KERNELS:
        raise UserError("the SelectiveScan op needs Numba or torch (pip install numba)")
    if not (_importable("numba") if kernel == "numba" else _has_torch_scan()):
        raise UserError(f"the SelectiveScan op's {kernel} kernel is not importable (pip install {kernel})")
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    from ..export.scan_graph import OP_TYPE

    scan = _numba_scan() if kernel == "numba" else _torch_scan()

    def selective_scan(u, delta, A, B, C, D, delta_bias, **attrs):
        selective_scan.calls += 1
        return scan(u, delta, A, B, C, D, delta_bias, bool(attrs.get("delta_softplus", 1)))

    selective_scan.calls = 0
    selective_scan.kernel = kernel
    # onnxruntime-extensions registers Python ops in its domain, ai.onnx.contrib: the plugin node's
    opdef = onnx_op(op_type=OP_TYPE, inputs=[PyCustomOpDef.dt_float] * 7, outputs=[PyCustomOpDef.dt_float],
                    attrs={"delta_softplus": PyCustomOpDef.dt_int64})(selective_scan)
    _install_array_bridge(opdef._id)
    _OP = selective_scan
    return _OP


def _install_array_bridge(op_id: int) -> None:
    """Route this op's result back to C++ as one float32 array instead of a Python list."""
    from onnxruntime_extensions import PyCustomOpDef, _ocos

    stock = _ocos._on_pyop_invocation

    def bridge(k_id, feed, attributes):
        if k_id != op_id:
            return stock(k_id, feed, attributes)
        op = _ocos.Opdef._odlist[k_id]
        y = op.body(*feed, **op.cast_attributes(attributes))
        return (k_id, y.shape, np.ascontiguousarray(y, dtype=np.float32).reshape(-1))

    PyCustomOpDef.install_hooker(bridge)


def first_call_s() -> float | None:
    """What the numba kernel's first launch in this process took (compile or on-disk cache load)."""
    if _OP is None or _OP.kernel != "numba":
        return None
    from ..ops.kernels import scan_numba_forward
    return scan_numba_forward.first_call_s()


@contextmanager
def calls_use_threads(threads: int | None):
    """Scan-op calls made on this thread inside the block use ``threads`` (None: every core).

    ONNX Runtime calls a Python op on the thread that called ``session.run``, so a runner wraps its
    run in this block: two runners with different thread counts in two threads never mix them.
    """
    previous = getattr(_CALLER, "threads", None)
    _CALLER.threads = threads
    try:
        yield
    finally:
        _CALLER.threads = previous


def launch_threads(threads: int | None) -> int | None:
    """Threads a numba launch uses for a runner asking ``threads`` (None when Numba is missing)."""
    if not _importable("numba"):
        return None
    from ..ops.kernels import scan_numba_forward
    return scan_numba_forward.launch_threads(threads)
