"""Runners: one base class (``base.Runner``), ``infer(clips) -> {output name: array}``, for every backend.

Each runner is imported on first use, so `serve --onnx` or an ONNX-only deployment does not pay
for importing torch, and onnxruntime / TensorRT stay optional dependencies of the package.
"""

from .base import Runner

__all__ = ["Runner", "TorchRunner", "OnnxRunner", "TensorRTRunner"]

_LAZY = {"TorchRunner": ".torch_runner", "OnnxRunner": ".onnx_runner", "TensorRTRunner": ".tensorrt_runner"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
