"""The runner base class shared by PyTorch, ONNX Runtime and TensorRT.

A runner takes prepared clips (B, T, C, H, W) float32 in [-1, 1] and returns named outputs as
numpy: score_map (B, 1, H, W), pred_frame (B, C, H, W), pred_motion (B, C, H, W), frame_score (B,).

Why a base class and not just a protocol: every caller needs the same few things from a runner
besides ``infer`` (the alert threshold stored with the model, the precision it computes in, the
time its last call took, a way to forget a stream's state), and each backend knows them from a
different place (checkpoint config, ONNX metadata, engine sidecar). The backend answers once,
here; callers read attributes instead of probing. ``infer`` is written once: it times the call
into ``last_call_s`` and hands the work to the backend's ``_infer``.
"""

from __future__ import annotations

import time

import numpy as np

from ..contract import InputContract


class Runner:
    """What every backend provides; subclasses set the attributes and implement ``_infer``.

    - ``name``: how reports name this runner (e.g. ``onnxruntime-loop``);
    - ``contract``: the input contract the model was trained with;
    - ``precision``: fp32 | fp16 | int8 (bf16 for the PyTorch runner on CUDA) and
      ``precision_source``, where that was read;
    - ``threshold``: the alert threshold calibrated on normal footage and stored with the model
      (None when none is stored), and ``threshold_source``;
    - ``component_stats``: the (mean, std) of the score components on normal footage, when the
      runner can return ``components`` (the ablation in ``evaluate`` needs them), else None, and
      ``component_names``, what each is, and ``score_tau``, the temperature that fuses them;
    - ``last_call_s``: wall time of the last ``infer`` call (host to host, copies included).
    """

    name: str = "runner"
    contract: InputContract
    precision: str | None = "fp32"
    precision_source: str = "runner"
    threshold: float | None = None
    threshold_source: str = "none stored"
    component_stats: tuple[np.ndarray, np.ndarray] | None = None
    component_names: tuple[str, ...] | None = None
    score_tau: float | None = None
    last_call_s: float = 0.0

    def infer(self, clips: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch of prepared clips; the wall time lands in ``last_call_s``."""
        t0 = time.perf_counter()
        out = self._infer(clips)
        self.last_call_s = time.perf_counter() - t0
        return out

    def _infer(self, clips: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def reset_stream(self) -> None:
        """Forget state carried from one call to the next (a new video starts). Stateless: no-op."""

    def describe(self) -> dict:
        """Where this runner computes, for reports: its name, plus device / providers when known."""
        return {"runner": self.name}

    def close(self) -> None:
        """Release sessions, engines and graphs."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
