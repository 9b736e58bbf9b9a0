"""The runner protocol shared by PyTorch, ONNX Runtime and TensorRT."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..contract import InputContract


class Runner(Protocol):
    """Runs prepared clips (B, T, C, H, W) float32 in [-1, 1] and returns named outputs as numpy.

    Outputs: score_map (B, 1, H, W), pred_frame (B, C, H, W), pred_motion (B, C, H, W),
    frame_score (B,). Runners are context managers so sessions/engines are released on exit.
    """

    name: str
    contract: InputContract

    def infer(self, clips: np.ndarray) -> dict[str, np.ndarray]: ...

    def __enter__(self): ...

    def __exit__(self, *exc): ...
