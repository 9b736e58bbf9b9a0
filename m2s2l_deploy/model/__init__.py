"""The PyTorch M2S2L model, its presets and checkpoints."""

from .config import PRESETS, ModelConfig, preset_config, preset_names
from .m2s2l import INPUT_NAME, M2S2L, OUTPUT_NAMES, decorrelation_loss

__all__ = ["PRESETS", "ModelConfig", "preset_config", "preset_names", "INPUT_NAME", "M2S2L",
           "OUTPUT_NAMES", "decorrelation_loss"]
