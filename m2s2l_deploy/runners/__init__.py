"""Runners: one tiny interface, ``infer(clips) -> {output name: array}``, for every backend."""

from .base import Runner
from .torch_runner import TorchRunner

__all__ = ["Runner", "TorchRunner", "OnnxRunner"]


def __getattr__(name):
    """OnnxRunner on first use: onnxruntime stays an optional dependency of the package."""
    if name == "OnnxRunner":
        from .onnx_runner import OnnxRunner
        return OnnxRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
