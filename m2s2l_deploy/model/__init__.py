"""The PyTorch M2S2L model, its presets, score and checkpoints.

``config`` and reading a checkpoint's ``config.json`` need no torch (an ONNX-only install checks
an ONNX file against its checkpoint); the network itself (``M2S2L``, ``layers``, ``scoring``) is
imported on first use.
"""

from .config import PRESETS, ModelConfig, preset_config, preset_names

__all__ = ["PRESETS", "ModelConfig", "preset_config", "preset_names", "INPUT_NAME", "M2S2L",
           "OUTPUT_NAMES", "decorrelation_loss"]

_LAZY = ("INPUT_NAME", "M2S2L", "OUTPUT_NAMES", "decorrelation_loss")


def __getattr__(name):
    if name in _LAZY:
        from . import m2s2l
        return getattr(m2s2l, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
