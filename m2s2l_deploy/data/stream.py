"""Decoding a video as a live system sees it: a background thread, resampled to the model's rate.

``VideoReader`` decodes with OpenCV on a background thread and yields (output index, source
index, BGR frame) at the model's training frame rate (motion scale depends on it):
``resample_stream`` is the streaming twin of ``contract.resample_indices``. A file that stops
decoding before the frame count its container promises is truncated or damaged and raises a
DataError where that is found (``allow_truncated`` scores the decodable part instead).
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

# ffmpeg prints decoder complaints (corrupt frames, missing atoms) straight to stderr; our errors say
# it in one line instead. Must be set before OpenCV first opens a video; a user's own value wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import numpy as np  # noqa: E402

from ..contract import resample_indices  # noqa: E402
from ..errors import DataError  # noqa: E402
from .video import iter_video, video_info  # noqa: E402

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


class VideoReader:
    """Decodes a video on a background thread; iterate for (output index, source index, BGR frame).

    ``decode_s`` is the time spent inside OpenCV. A file that stops decoding before the frame count
    its container promises is truncated or damaged: that raises a DataError at the point it is
    found (``allow_truncated`` scores the decodable part instead).
    """

    def __init__(self, path, target_fps: float | None = None, max_frames: int | None = None,
                 allow_truncated: bool = False, queue_size: int = 64):
        self.path = Path(path)
        quiet_opencv()
        self.info = video_info(self.path)          # checks existence, emptiness, decodability
        self.src_fps = self.info["fps"] or None
        self.target_fps = target_fps
        self.max_frames = max_frames
        self.allow_truncated = allow_truncated
        self.decode_s = 0.0
        self.n_decoded = 0
        self.truncated = False
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def resampled(self) -> bool:
        return bool(self.target_fps and self.src_fps and abs(self.src_fps - self.target_fps) > 1e-6 * self.src_fps)

    def expected_frames(self) -> int:
        """Output frames the whole (or --max-frames) video should give, from the container's count."""
        n = self.info["n_frames"]
        if self.max_frames is not None:
            n = min(n, self.max_frames)
        if not self.resampled:
            return n
        return len(resample_indices(n, self.src_fps, self.target_fps))

    def _timed_frames(self):
        it = iter_video(self.path, self.max_frames)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.decode_s += time.perf_counter() - t0
                return
            self.decode_s += time.perf_counter() - t0
            self.n_decoded += 1
            yield item

    def _run(self) -> None:
        try:
            for item in resample_stream(self._timed_frames(), self.src_fps, self.target_fps):
                if not self._put(("frame", item)):
                    return
            self._check_complete()
            self._put(("end", None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._put(("error", e))

    def _check_complete(self) -> None:
        promised = self.info["n_frames"]
        if self.max_frames is not None:
            promised = min(promised, self.max_frames)
        short = promised - self.n_decoded
        exact = self.path.suffix.lower() in EXACT_COUNT_EXTS
        if short > 0 and (exact or short > max(2, 0.02 * promised)):
            self.truncated = True
            if not self.allow_truncated:
                raise DataError(f"{self.path} is truncated or has unreadable frames: decoding stopped at frame "
                                f"{self.n_decoded} of {promised} (pass --allow-truncated to score the decodable part)")

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
