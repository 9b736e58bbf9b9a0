"""The input contract: how raw frames become model input.

It is stored in every checkpoint config and applied by every runner (PyTorch, ONNX, engines,
live), so a model always sees frames prepared exactly as in training: same size, resize policy,
channels, value range and frame rate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from .errors import DataError, UserError

RESIZE_MODES = ("stretch", "letterbox")
_MAX_SIDE = 8192


def _as_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise UserError(f"input contract: {name} must be an integer, got {value!r}")
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise UserError(f"input contract: {name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise UserError(f"input contract: {name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class InputContract:
    """Frame size, resize policy, channels, training frame rate and clip length of a model."""

    height: int = 64
    width: int = 64
    channels: int = 1
    resize: str = "stretch"
    fps: float | None = None
    clip_len: int = 5

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = _as_int(name, getattr(self, name), 1)
            if value > _MAX_SIDE:
                raise UserError(f"input contract: {name} must be <= {_MAX_SIDE}, got {value}")
            object.__setattr__(self, name, value)
        channels = _as_int("channels", self.channels, 1)
        if channels not in (1, 3):
            raise UserError(f"input contract: channels must be 1 (gray) or 3 (RGB), got {channels}")
        object.__setattr__(self, "channels", channels)
        if self.resize not in RESIZE_MODES:
            raise UserError(
                f"input contract: resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}"
            )
        if self.fps is not None:
            if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float, np.integer, np.floating)):
                raise UserError(f"input contract: fps must be a number or null, got {self.fps!r}")
            fps = float(self.fps)
            if not math.isfinite(fps) or fps <= 0:
                raise UserError(f"input contract: fps must be positive, got {self.fps!r}")
            object.__setattr__(self, "fps", fps)
        object.__setattr__(self, "clip_len", _as_int("clip_len", self.clip_len, 2))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> "InputContract":
        """Build from a checkpoint config; unknown keys are ignored so newer configs still load."""
        if not isinstance(d, dict):
            raise UserError(f"input contract must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def letterbox_geometry(src_hw, dst_hw) -> tuple[float, int, int, int, int]:
    """Where a source frame lands inside the destination when its aspect ratio is kept.

    Returns (scale, top, left, new_h, new_w): the frame is resized by `scale` to new_h x new_w and
    placed at (top, left), centred; the rest is padding. Invert it to map score maps back.
    """
    sh, sw = (int(v) for v in src_hw[:2])
    dh, dw = (int(v) for v in dst_hw[:2])
    if min(sh, sw, dh, dw) < 1:
        raise ValueError(f"letterbox sizes must be positive, got {src_hw} -> {dst_hw}")
    scale = min(dh / sh, dw / sw)
    new_h = min(dh, max(1, int(round(sh * scale))))
    new_w = min(dw, max(1, int(round(sw * scale))))
    return scale, (dh - new_h) // 2, (dw - new_w) // 2, new_h, new_w


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    sh, sw = img.shape[:2]
    if (sh, sw) == (h, w):
        return img
    interp = cv2.INTER_AREA if h <= sh and w <= sw else cv2.INTER_LINEAR
    out = cv2.resize(img, (w, h), interpolation=interp)
    return out.reshape(h, w, *img.shape[2:])


def _to_channels(frame: np.ndarray, channels: int) -> np.ndarray:
    """BGR/BGRA/gray uint8 -> gray (H,W) or RGB (H,W,3)."""
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        return frame if channels == 1 else np.repeat(frame[:, :, None], 3, axis=2)
    code = {
        (3, 1): cv2.COLOR_BGR2GRAY,
        (3, 3): cv2.COLOR_BGR2RGB,
        (4, 1): cv2.COLOR_BGRA2GRAY,
        (4, 3): cv2.COLOR_BGRA2RGB,
    }[(frame.shape[2], channels)]
    return cv2.cvtColor(np.ascontiguousarray(frame), code)


def prepare_frames(frames: np.ndarray, contract: InputContract) -> np.ndarray:
    """uint8 frames as OpenCV decodes them -> float32 (N, C, h, w) model input in [-1, 1].

    Accepts (N,H,W) gray, (N,H,W,3) BGR (or 1/4 channels), or one frame (H,W) / (H,W,3).
    Channels are converted first (BGR -> RGB or gray), then the frame is resized in float32
    (INTER_AREA when shrinking, INTER_LINEAR otherwise); letterbox pads with black (-1).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise DataError(f"frames must be uint8 images, got dtype {frames.dtype}")
    if frames.ndim == 2 or (frames.ndim == 3 and frames.shape[2] in (3, 4)):
        frames = frames[None]
    if frames.ndim == 4 and frames.shape[3] not in (1, 3, 4):
        raise DataError(f"frames must have 1, 3 or 4 channels, got shape {frames.shape}")
    if frames.ndim not in (3, 4) or min(frames.shape[1:3]) < 1:
        raise DataError(f"frames must be (N,H,W) or (N,H,W,3) images, got shape {frames.shape}")

    h, w, c = contract.height, contract.width, contract.channels
    out = np.full((frames.shape[0], h, w, c), -1.0, dtype=np.float32)
    if contract.resize == "letterbox":
        _, top, left, nh, nw = letterbox_geometry(frames.shape[1:3], (h, w))
    else:
        top, left, nh, nw = 0, 0, h, w
    for i, frame in enumerate(frames):
        img = _to_channels(frame, c).astype(np.float32)
        img = _resize(img, nh, nw)
        out[i, top:top + nh, left:left + nw] = img.reshape(nh, nw, c) / 127.5 - 1.0
    np.clip(out, -1.0, 1.0, out=out)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def sliding_clips(n_frames: int, clip_len: int, stride: int = 1) -> np.ndarray:
    """Frame indices (K, clip_len) of every clip whose last frame is the target.

    Targets are clip_len-1, clip_len-1+stride, ...; the first clip_len-1 frames have no full
    history and are never targets. Fewer frames than clip_len gives an empty (0, clip_len) array.
    """
    if clip_len < 1 or stride < 1:
        raise ValueError(f"clip_len and stride must be >= 1, got {clip_len}, {stride}")
    targets = np.arange(clip_len - 1, max(int(n_frames), 0), stride, dtype=np.int64)
    return targets[:, None] + np.arange(-clip_len + 1, 1, dtype=np.int64)[None, :]


def resample_indices(n_src: int, src_fps: float, dst_fps: float | None) -> np.ndarray:
    """Source frame indices that play the video at dst_fps (nearest frame, non-decreasing).

    The model learned motion at its training frame rate, so inference must see the same time
    step between frames. Downsampling drops frames; upsampling repeats the nearest frame only as
    often as the rate ratio requires. Identity when dst_fps is None or equals src_fps.
    """
    n_src = max(int(n_src), 0)
    identity = np.arange(n_src, dtype=np.int64)
    if dst_fps is None:
        return identity
    dst = float(dst_fps)
    if not math.isfinite(dst) or dst <= 0:
        raise ValueError(f"target frame rate must be positive, got {dst_fps!r}")
    src = float(src_fps) if src_fps is not None else float("nan")
    if not math.isfinite(src) or src <= 0:
        raise DataError(
            f"the video's frame rate is unknown ({src_fps!r}), so it cannot be resampled to {dst:g} fps"
        )
    if abs(src - dst) <= 1e-6 * max(src, dst) or n_src == 0:
        return identity
    duration_steps = (n_src - 1) * dst / src
    n_out = int(math.floor(duration_steps + 1e-6)) + 1
    idx = np.floor(np.arange(n_out, dtype=np.float64) * (src / dst) + 0.5 + 1e-9).astype(np.int64)
    return np.minimum(idx, n_src - 1)
