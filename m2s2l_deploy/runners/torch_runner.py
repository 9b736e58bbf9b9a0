"""PyTorch runner (CPU or CUDA): the reference every other runner is compared with."""

from __future__ import annotations

import numpy as np
import torch

from ..model import OUTPUT_NAMES
from ..model.checkpoint import Checkpoint, load_checkpoint


class TorchRunner:
    def __init__(self, checkpoint: Checkpoint | str, device: str = "cpu", extras: bool = False):
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.contract = self.checkpoint.contract
        self.device = torch.device(device)
        self.model = self.checkpoint.build_model().to(self.device)
        self.extras = extras
        self.name = f"torch-{self.device.type}"

    def infer(self, clips: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(clips, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            out = self.model.outputs(x)
        result = {k: out[k].float().cpu().numpy() for k in OUTPUT_NAMES}
        if self.extras:
            result["components"] = out["components"].float().cpu().numpy()
        return result

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
