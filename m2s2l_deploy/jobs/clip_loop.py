"""The one clip-scoring loop: sliding clips over prepared frames, batched through any runner.

Every job that scores frames goes through ``scored_batches``: ``evaluate`` and train's
calibration (``score_prepared``, whole videos), ``validate`` (both runners on the same clips) and
``bench`` (frames arriving one by one from a decoder). The loop keeps the last T frames, makes a
clip ending at every frame once T frames have arrived, runs ``batch`` clips per ``runner.infer``
call and yields each batch with its outputs and timing. Frames 0..T-2 have no full history: the
batch holding the first clip also decides them, with the first decidable score
(``ScoredBatch.decided``), so every caller fills them the same way.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import DataError, UserError

# Outputs a caller gets as arrays of its own; anything else a runner returns lands in VideoScores.extra.
_KNOWN_OUTPUTS = ("frame_score", "components", "score_map", "pred_frame", "pred_motion")


@dataclass
class ScoredBatch:
    """One ``runner.infer`` call: clip i ends at frame ``targets[i]``.

    ``outputs`` are the runner's arrays, ``scores`` its ``frame_score`` as float32 (n,),
    ``seconds`` the call's wall time (``runner.last_call_s``), ``first_clip_len`` T when this batch
    holds the video's first clip (frames 0..T-2 are then decided by it), else 0.
    """

    targets: list[int]
    outputs: dict[str, np.ndarray]
    scores: np.ndarray
    seconds: float
    first_clip_len: int = 0

    def decided(self) -> Iterator[tuple[int, float]]:
        """(frame, score) of every frame this batch decides, in order, first-frame fill included."""
        for k, s in zip(self.targets, self.scores):
            if self.first_clip_len and k == self.first_clip_len - 1:
                for j in range(k):
                    yield j, float(s)
            yield k, float(s)


def scored_batches(runner, frames: Iterable[np.ndarray], batch: int = 16) -> Iterator[ScoredBatch]:
    """Score every clip of ``frames`` (prepared (C, H, W) float32 frames, in order) with ``runner``.

    ``frames`` may be an array (N, C, H, W) or a generator (a live decoder); clips are batched
    ``batch`` at a time, the last batch may be smaller. Call ``runner.reset_stream()`` before a new
    video when the runner keeps state across calls.
    """
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    T = runner.contract.clip_len
    window: deque = deque(maxlen=T)
    clips: list[np.ndarray] = []
    targets: list[int] = []
    first = True

    def run() -> ScoredBatch:
        nonlocal first
        out = runner.infer(np.stack(clips))
        scores = np.asarray(out["frame_score"], dtype=np.float32).reshape(-1)
        b = ScoredBatch(list(targets), out, scores, runner.last_call_s, T if first else 0)
        first = False
        clips.clear()
        targets.clear()
        return b

    for k, frame in enumerate(frames):
        window.append(frame)
        if len(window) == T:
            clips.append(np.stack(window))
            targets.append(k)
            if len(clips) == batch:
                yield run()
    if clips:
        yield run()


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


def fill_head(values: np.ndarray, first: int) -> np.ndarray:
    """Prepend ``first`` copies of values[0]: frames before the first full clip."""
    return np.concatenate([np.repeat(values[:1], first, axis=0), values], axis=0)


def score_prepared(runner, prepared: np.ndarray, name: str = "video", batch: int = 16,
                   want_maps: bool = False, progress: Callable[[int], None] | None = None) -> VideoScores:
    """A whole video: prepared (N, C, H, W) float32 frames under the runner's contract."""
    clip_len = runner.contract.clip_len
    if len(prepared) < clip_len:
        raise DataError(f"{name} has {len(prepared)} frames, fewer than one clip of {clip_len}")
    scores, comps, maps, extra = [], [], [], {}
    seconds = 0.0
    for b in scored_batches(runner, prepared, batch):
        seconds += b.seconds
        scores.append(b.scores)
        out = b.outputs
        if "components" in out:
            comps.append(out["components"])
        if want_maps:
            maps.append(out["score_map"][:, 0].astype(np.float16))
        for k, v in out.items():
            if k not in _KNOWN_OUTPUTS:
                extra.setdefault(k, []).append(v)
        if progress is not None:
            progress(len(b.targets))
    first = clip_len - 1
    return VideoScores(
        name=name,
        frame_score=fill_head(np.concatenate(scores), first),
        first_decidable=first,
        components=fill_head(np.concatenate(comps), first) if comps else None,
        score_maps=fill_head(np.concatenate(maps), first) if maps else None,
        seconds=seconds,
        extra={k: np.concatenate(v) for k, v in extra.items()},
    )
