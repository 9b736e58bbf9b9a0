"""Score a sequence of frames with any runner: sliding clips, batching, first-frame fill."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import DataError
from .contract import InputContract, prepare_frames, sliding_clips


@dataclass
class VideoScores:
    """Per-frame results for one video.

    ``frame_score`` is the causal score (normal-footage standard deviations). Frames
    0..first_decidable-1 have no full history; they carry the first decidable frame's score.
    """

    name: str
    frame_score: np.ndarray
    first_decidable: int
    components: np.ndarray | None = None     # (N, 3) when the runner provides them
    score_maps: np.ndarray | None = None     # (N, H, W) float16 when asked for
    seconds: float = 0.0                     # time spent inside runner.infer
    extra: dict | None = None                # any other per-clip outputs the runner returned (targets only)


def _fill_head(values: np.ndarray, first: int) -> np.ndarray:
    """Prepend ``first`` copies of values[0]: frames before the first full clip."""
    return np.concatenate([np.repeat(values[:1], first, axis=0), values], axis=0)


def score_prepared(runner, prepared: np.ndarray, name: str = "video", batch: int = 16,
                   want_maps: bool = False, progress: Callable[[int], None] | None = None) -> VideoScores:
    """prepared: (N, C, H, W) float32 frames under the runner's contract."""
    clip_len = runner.contract.clip_len
    index = sliding_clips(len(prepared), clip_len)
    if len(index) == 0:
        raise DataError(f"{name} has {len(prepared)} frames, fewer than one clip of {clip_len}")
    scores, comps, maps, extra = [], [], [], {}
    seconds = 0.0
    for start in range(0, len(index), batch):
        idx = index[start:start + batch]
        t0 = time.perf_counter()
        out = runner.infer(prepared[idx])
        seconds += time.perf_counter() - t0
        scores.append(out["frame_score"].reshape(-1))
        if "components" in out:
            comps.append(out["components"])
        if want_maps:
            maps.append(out["score_map"][:, 0].astype(np.float16))
        for k, v in out.items():
            if k not in ("frame_score", "components", "score_map", "pred_frame", "pred_motion"):
                extra.setdefault(k, []).append(v)
        if progress is not None:
            progress(len(idx))
    first = clip_len - 1
    return VideoScores(
        name=name,
        frame_score=_fill_head(np.concatenate(scores), first),
        first_decidable=first,
        components=_fill_head(np.concatenate(comps), first) if comps else None,
        score_maps=_fill_head(np.concatenate(maps), first) if maps else None,
        seconds=seconds,
        extra={k: np.concatenate(v) for k, v in extra.items()},
    )


def prepare_video(video, contract: InputContract) -> np.ndarray:
    """Decode a dataset Video and apply the input contract: (N, C, H, W) float32."""
    return prepare_frames(video.load(), contract)
