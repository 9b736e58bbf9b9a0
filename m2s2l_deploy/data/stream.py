"""Decoding a source as a live system sees it: a background thread, resampled to the model's rate.

``VideoReader`` (bench) decodes any source of ``sources.parse_source`` with OpenCV on a background
thread and yields (output index, source index, BGR frame) at the model's training frame rate
(motion scale depends on it): ``resample_stream`` is the streaming twin of
``contract.resample_indices``, and ``resample_by_time`` the same rule on timestamps for streams
(``live.LiveReader``, watch). A file that stops decoding before the frame count its container
promises is truncated or damaged and raises a DataError where that is found (``allow_truncated``
scores the decodable part instead); a stream bench reads has no count and ends where it drops.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from pathlib import Path
from typing import Iterable, Iterator

# ffmpeg prints decoder complaints (corrupt frames, missing atoms) straight to stderr; our errors say
# it in one line instead. Must be set before OpenCV first opens a video; a user's own value wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import numpy as np  # noqa: E402

from ..contract import resample_indices  # noqa: E402
from ..errors import DataError, UserError  # noqa: E402
from .opened import StreamLost  # noqa: E402
from .sources import Source, parse_source  # noqa: E402

# Containers whose frame count comes from an index (exact): decoding fewer frames means damage.
EXACT_COUNT_EXTS = (".avi", ".mp4", ".mov", ".m4v")


def quiet_opencv() -> None:
    """OpenCV's own warnings (e.g. a backend refusing a file) to errors only, unless the user set a level."""
    import cv2
    if "OPENCV_LOG_LEVEL" not in os.environ and hasattr(cv2, "setLogLevel"):
        cv2.setLogLevel(2)          # cv::utils::logging::LOG_LEVEL_ERROR


def resample_stream(frames: Iterable[tuple[int, np.ndarray]], src_fps: float | None,
                    dst_fps: float | None) -> Iterator[tuple[int, int, np.ndarray]]:
    """(source index, frame) pairs -> (output index, source index, frame) at ``dst_fps``.

    Streaming twin of ``contract.resample_indices`` (same picks, without knowing the length): output
    frame k exists once a source frame at or after time k/dst has arrived, and is the source frame
    nearest to that time. Identity when either rate is unknown or they are equal.
    """
    if dst_fps is None or not src_fps or abs(src_fps - dst_fps) <= 1e-6 * max(src_fps, dst_fps):
        for i, f in frames:
            yield i, i, f
        return
    ratio = float(src_fps) / float(dst_fps)
    k, prev = 0, None
    for i, f in frames:
        while k <= i / ratio + 1e-6:
            idx = min(int(math.floor(k * ratio + 0.5 + 1e-9)), i)
            yield k, idx, (f if idx == i else prev[1])
            k += 1
        prev = (i, f)


def resample_by_time(frames: Iterable[tuple[int, float, np.ndarray]], dst_fps: float | None,
                     max_hole_s: float) -> Iterator[tuple[int, int, np.ndarray, bool]]:
    """(source index, timestamp s, frame) -> (output index, source index, frame, fresh) at ``dst_fps``.

    ``resample_stream``'s rule on timestamps: output frame k is due at t0 + k/dst_fps and is the
    source frame nearest to that time (ties to the later one), given once a frame at or after it
    has arrived; with timestamps i/src it picks exactly what ``resample_indices`` picks. A stream's
    clock has holes: a step longer than ``max_hole_s`` (or backwards) restarts the output clock at
    that frame instead of repeating the last frame across the hole, k continuing by the elapsed
    time (by one after a backward step). ``fresh`` marks frames without history: the first one and
    the first after each restart. ``dst_fps`` None passes every frame (k counts them).
    """
    t0 = None
    k, prev, prev_pos, prev_ts = 0, None, 0.0, 0.0
    fresh = True
    for i, ts, frame in frames:
        if prev is not None and (ts < prev_ts or ts - prev_ts > max_hole_s):
            if dst_fps and ts > prev_ts:
                k = max(k, int(math.floor((ts - t0) * dst_fps + 1e-6)))
            t0 = ts - k / dst_fps if dst_fps else ts
            prev, fresh = None, True
        if t0 is None:
            t0 = ts
        prev_ts = ts
        if not dst_fps:
            yield k, i, frame, fresh
            k, fresh, prev = k + 1, False, (i, frame)
            continue
        pos = (ts - t0) * dst_fps
        while k <= pos + 1e-6:
            take_current = prev is None or pos - k <= k - prev_pos + 1e-9
            idx, f = (i, frame) if take_current else prev
            yield k, idx, f, fresh
            k, fresh = k + 1, False
        prev, prev_pos = (i, frame), pos


class VideoReader:
    """Decodes a source on a background thread; iterate for (output index, source index, BGR frame).

    ``source``: a ``sources.Source`` or SOURCE text (``fps`` is the rate of a folder of frames).
    ``info`` has fps, n_frames (None for a stream), width and height (None when a stream does not
    say before its first frame); ``decode_s`` is the time spent decoding. A file that stops decoding
    before the frame count its container promises is truncated or damaged: that raises a DataError
    at the point it is found (``allow_truncated`` scores the decodable part instead). A stream is
    resampled by its timestamps, and one that drops ends the reading (``lost`` says why): bench is
    one pass, ``watch`` reconnects.
    """

    def __init__(self, source, target_fps: float | None = None, max_frames: int | None = None,
                 allow_truncated: bool = False, queue_size: int = 64, fps: float | None = None,
                 timeout_s: float = 10.0):
        self.source = source if isinstance(source, Source) else parse_source(source, fps)
        if self.source.live and max_frames is None:
            raise UserError(f"{self.source.name} is a live source: give --max-frames N "
                            "(`watch` scores a stream until it is stopped)")
        quiet_opencv()
        self.opened = self.source.open(timeout_s)         # checks existence, emptiness, decodability
        size = self.opened.size or (None, None)
        self.info = {"fps": self.opened.fps or 0.0, "n_frames": self.opened.n_frames,
                     "width": size[0], "height": size[1]}
        self.src_fps = self.opened.fps or None
        self.target_fps = target_fps
        self.max_frames = max_frames
        self.allow_truncated = allow_truncated
        self.n_decoded = 0
        self.truncated = False
        self.lost: str | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def decode_s(self) -> float:
        return self.opened.decode_s

    @property
    def resampled(self) -> bool:
        if self.source.live:
            return bool(self.target_fps)           # by timestamps
        return bool(self.target_fps and self.src_fps and abs(self.src_fps - self.target_fps) > 1e-6 * self.src_fps)

    def expected_frames(self) -> int:
        """Output frames the whole (or --max-frames) source should give, from its frame count."""
        n = self.info["n_frames"]
        if n is None or (self.max_frames is not None and self.max_frames < n):
            n = self.max_frames
        if not self.resampled or self.source.live:
            return n
        return len(resample_indices(n, self.src_fps, self.target_fps))

    def _frames(self):
        try:
            for i, ts, frame in self.opened.frames():
                if self.info["width"] is None:               # a stream tells its size with its first frame
                    self.info.update(width=int(frame.shape[1]), height=int(frame.shape[0]))
                self.n_decoded += 1
                yield i, ts, frame
                if self.max_frames is not None and self.n_decoded >= self.max_frames:
                    return
        except StreamLost as e:
            self.lost = str(e)

    def _run(self) -> None:
        try:
            if self.source.live:       # by timestamps; one pass: a hole restarts the clock, not the clip
                frames = ((k, i, f) for k, i, f, _ in resample_by_time(self._frames(), self.target_fps, 0.5))
            else:
                frames = resample_stream(((i, f) for i, _, f in self._frames()), self.src_fps, self.target_fps)
            for item in frames:
                if not self._put(("frame", item)):
                    return
            self._check_complete()
            self._put(("end", None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._put(("error", e))

    def _check_complete(self) -> None:
        if self.source.kind != "file":
            return
        promised = self.info["n_frames"]
        if self.max_frames is not None:
            promised = min(promised, self.max_frames)
        short = promised - self.n_decoded
        exact = Path(self.source.target).suffix.lower() in EXACT_COUNT_EXTS
        if short > 0 and (exact or short > max(2, 0.02 * promised)):
            self.truncated = True
            if not self.allow_truncated:
                raise DataError(f"{self.source.name} is truncated or has unreadable frames: decoding stopped at "
                                f"frame {self.n_decoded} of {promised} (pass --allow-truncated to score the "
                                "decodable part)")

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        self._thread = threading.Thread(target=self._run, name="bench-decode", daemon=True)
        self._thread.start()
        try:
            while True:
                kind, payload = self._queue.get()
                if kind == "frame":
                    yield payload
                elif kind == "end":
                    return
                else:
                    raise payload
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.opened.close()
