"""Reading a source for as long as it runs: reopened with backoff, gaps reported, frames handed to
the scorer without ever holding up a live source.

``LiveReader`` runs one thread per source: it opens the source, resamples it by timestamps to the
model's rate (``stream.resample_by_time``), prepares each frame (``transform``, e.g. the input
contract) and queues it for the scorer, which takes items with ``get``.

- Opening: a source that cannot be opened is retried ``max_retries`` times with doubling backoff,
  then given up (``state`` "failed", one ``source_failed`` event). A source that opened once and
  then dropped is retried without limit (a camera comes back), the backoff capped at
  ``max_backoff_s``.
- Gaps: a stream that closes, or stalls (every read is bounded by ``stall_timeout_s``), is
  reopened. ``stream_lost`` is reported at once and a ``StreamBreak`` queued (as for a hole in the
  timestamps), so the scorer closes the alert it had open; ``stream_resumed`` when frames flow
  again, with the gap in seconds and the frames lost at the model's rate. Frame indices jump by
  those frames, so they stay a clock.
- History: every frame carries ``fresh`` (no history: the first after an opening, a gap, a hole in
  the timestamps or dropped frames); the scorer starts a new clip history there, so a stale frame
  never pairs with a fresh one.
- Falling behind: a live source's queue holds ``queue_frames`` frames; a frame that arrives to a
  full queue drops the queued ones (counted in ``dropped``) and starts fresh, so the scorer works
  on recent, contiguous frames and memory stays bounded. A file or folder waits for the scorer.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import DataError
from .opened import StreamLost
from .sources import Source
from .stream import quiet_opencv, resample_by_time


@dataclass
class LiveFrame:
    """One frame at the model's rate: ``k`` its index since the run started (gaps advance it by the
    frames they lost), ``ts`` the source's timestamp, ``wall`` when it was read (``time.time()``),
    ``arrived`` the same on ``time.perf_counter()`` (for latency), ``image`` as decoded (BGR),
    ``prepared`` what ``transform`` made of it, ``fresh`` True when it has no history."""

    k: int
    ts: float
    wall: float
    arrived: float
    image: np.ndarray
    prepared: Any
    fresh: bool


@dataclass
class StreamBreak:
    """Frames are missing here (the stream was lost, or its timestamps jump): what follows is after a
    break, and an alert open before it is closed (nothing was seen in between)."""

    reason: str


class LiveReader:
    """A source read on a background thread until it ends, fails or ``stop`` is called.

    ``on_event(dict)`` receives source_opened / source_failed / stream_lost / stream_resumed /
    source_ended events (called from the reader thread). Counters for health: ``frames_in``
    (frames at the model's rate), ``dropped``, ``holes`` (restarts on timestamp holes),
    ``gaps`` (one dict per resumed gap), ``queue_max``; ``state`` is opening, live, reconnecting,
    failed, ended or stopped.
    """

    def __init__(self, source: Source, target_fps: float | None, *, transform: Callable | None = None,
                 max_retries: int = 3, stall_timeout_s: float = 10.0, queue_frames: int = 16,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 on_event: Callable[[dict], None] | None = None):
        if max_retries < 0 or stall_timeout_s <= 0 or queue_frames < 1:
            raise ValueError("max_retries >= 0, stall_timeout_s > 0 and queue_frames >= 1 are required")
        self.source, self.target_fps, self.transform = source, target_fps, transform
        self.max_retries, self.stall_timeout_s, self.queue_frames = max_retries, stall_timeout_s, queue_frames
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.on_event = on_event or (lambda event: None)
        self.state = "opening"
        self.opened_ever = False
        self.error: str | None = None
        self.fps: float | None = None
        self.frames_in = self.dropped = self.holes = self.queue_max = 0
        self.gaps: list[dict] = []
        self._q: deque = deque()
        self._queued_frames = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._done = False
        self._bug: BaseException | None = None
        self._last = None                   # (k, wall, perf) of the last frame read
        self._lost = None                   # (reason, perf when lost) while the stream is gone
        self._reopens = 0
        self._thread: threading.Thread | None = None

    # -- the consumer's side ------------------------------------------------------------------------
    def start(self) -> "LiveReader":
        self._thread = threading.Thread(target=self._run, name=f"read {self.source.name}", daemon=True)
        self._thread.start()
        return self

    def get(self) -> LiveFrame | StreamBreak | None:
        """The next item, waiting for it; None once the source ended, failed or was stopped."""
        with self._cond:
            while not self._q or self._stop.is_set():
                if self._stop.is_set() or self._done:
                    if self._bug is not None:
                        raise self._bug
                    return None
                self._cond.wait(0.2)
            item = self._q.popleft()
            if isinstance(item, LiveFrame):
                self._queued_frames -= 1
            self._cond.notify_all()
            return item

    @property
    def queue_depth(self) -> int:
        return self._queued_frames

    @property
    def finished(self) -> bool:
        return self._done

    def stop(self) -> None:
        """Stop reading (a read blocked on a stalled stream ends within ``stall_timeout_s``)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the reader thread --------------------------------------------------------------------------
    def _emit(self, event: str, **fields) -> None:
        self.on_event({"event": event, "source": self.source.name, **fields})

    def _run(self) -> None:
        quiet_opencv()
        try:
            self._loop()
        except BaseException as e:  # a bug: the consumer re-raises it
            self._bug = e
        finally:
            if self.state not in ("failed", "ended"):
                self.state = "stopped"
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _loop(self) -> None:
        attempts, backoff = 0, self.backoff_s
        while not self._stop.is_set():
            self.state = "reconnecting" if self.opened_ever else "opening"
            try:
                opened = self.source.open(self.stall_timeout_s)
            except DataError as e:
                attempts += 1
                self.error = str(e)
                if not self.opened_ever and attempts > self.max_retries:
                    self.state = "failed"
                    self._emit("source_failed", reason=str(e), attempts=attempts)
                    return
                self._reopens += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            if not self.opened_ever:
                self._emit("source_opened", kind=self.source.kind, fps=opened.fps,
                           size=list(opened.size) if opened.size else None, attempts=attempts + 1)
            self.opened_ever, attempts = True, 0
            try:
                reason = self._read(opened)
            except DataError as e:                  # a file or folder unreadable part-way: it stays so
                self.state, self.error = "failed", str(e)
                self._emit("source_failed", reason=str(e), attempts=1)
                return
            finally:
                opened.close()
            if self._stop.is_set():
                return
            if reason is None:
                self.state = "ended"
                self._emit("source_ended", frames=self.frames_in)
                return
            if self._last is not None and self._lost is None:
                backoff = self.backoff_s            # it was flowing: the first retry comes soon
            self._lose(reason)
            self._reopens += 1
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def _read(self, opened) -> str | None:
        """Frames of one opening into the queue; None when a file or folder ended, else why it stopped."""
        if opened.fps is None and not self.source.live:
            opened.fps = self.target_fps or 10.0      # a folder without --fps plays at the model's rate
        self.fps = opened.fps
        period = 1.0 / opened.fps if opened.fps else 0.0
        max_hole = max(0.5, 4.0 / self.target_fps if self.target_fps else 0.0, 2.0 * period)
        base, first = 0, True
        pairs = ((i, ts, (ts, img)) for i, ts, img in opened.frames())
        try:
            for k, _, (ts, image), fresh in resample_by_time(pairs, self.target_fps, max_hole):
                wall, now = time.time(), time.perf_counter()
                if first:
                    base, first = self._resume(k, now), False
                    fresh = True
                elif fresh:
                    self.holes += 1
                    self._break("a hole in the stream's timestamps")
                prepared = self.transform(image) if self.transform is not None else image
                self._last = (base + k, wall, now)
                self.state = "live"
                if not self._put(LiveFrame(base + k, ts, wall, now, image, prepared, fresh)):
                    return None
        except StreamLost as e:
            return str(e)
        return "the stream ended" if self.source.live else None

    def _lose(self, reason: str) -> None:
        if self._lost is not None:
            return                                      # still the same gap: reopened, lost again
        self._lost = (reason, time.perf_counter())
        self._reopens = 0
        self._emit("stream_lost", reason=reason, last_frame=self._last[0] if self._last else None)
        self._break(f"stream lost ({reason})")

    def _break(self, reason: str) -> None:
        """Tell the scorer, in order with the frames and never dropped, that what follows is after a break."""
        with self._cond:
            self._q.append(StreamBreak(reason))
            self._cond.notify_all()

    def _resume(self, k_first: int, now: float) -> int:
        """The index offset of a new opening: continues after the last frame, plus the frames lost."""
        rate = self.target_fps or self.fps
        if self._last is None:                          # no frame yet: the gap runs from the loss
            last_k, gap_s = -1, (now - self._lost[1]) if self._lost else 0.0
        else:
            last_k, gap_s = self._last[0], now - self._last[2]
        lost = max(0, int(round(gap_s * rate)) - 1) if rate and self._last is not None else 0
        if self._lost is not None:
            gap = {"reason": self._lost[0], "seconds": round(gap_s, 3), "frames_lost": lost,
                   "from_frame": last_k, "to_frame": last_k + 1 + lost, "reopen_attempts": self._reopens}
            self.gaps.append(gap)
            self._emit("stream_resumed", **gap)
            self._lost = None
        return last_k + 1 + lost - k_first

    def _put(self, frame: LiveFrame) -> bool:
        with self._cond:
            if self._stop.is_set():
                return False
            self.frames_in += 1
            if self.source.live:
                if self._queued_frames >= self.queue_frames:      # behind: drop what waits, start fresh
                    self.dropped += self._queued_frames
                    self._q = deque(x for x in self._q if not isinstance(x, LiveFrame))
                    self._queued_frames = 0
                    frame.fresh = True
            else:
                while self._queued_frames >= self.queue_frames and not self._stop.is_set():
                    self._cond.wait(0.2)
                if self._stop.is_set():
                    return False
            self._q.append(frame)
            self._queued_frames += 1
            self.queue_max = max(self.queue_max, self._queued_frames)
            self._cond.notify_all()
        return True
