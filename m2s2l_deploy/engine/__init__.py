"""TensorRT engines from exported ONNX: backend, precision, plugin, build, sidecar.

``build_engine`` is the entry point; see ``build.py``. Heavy dependencies (tensorrt or
tensorrt_rtx, onnxconverter-common, onnxruntime.quantization) are imported only when used. The
engine layer works from ONNX files: it never imports the PyTorch model (``export.scan_graph``, the
SelectiveScan node's ONNX definition, is torch-free).
"""

from __future__ import annotations


def __getattr__(name):
    if name in ("build_engine", "BuildResult", "EngineBuildError"):
        from . import build
        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["build_engine", "BuildResult", "EngineBuildError"]
