"""Alert events from per-frame anomaly scores, as a live system raises them.

Why a state machine: a camera feed cannot look ahead, so an alert must be decidable at the frame
it is raised. ``AlertTracker`` consumes one score at a time; ``alert_events`` runs it over a whole
score sequence and gives exactly the events a live run would have produced.

Rules (``min_frames`` = m, ``merge_gap`` = g):
- an event is raised once m consecutive frames score above the threshold; it starts at the first
  of them (``start_frame``) and is raised at the m-th (``raised_frame``, the alert's delay);
- while open, any frame above the threshold extends it; it closes after more than g consecutive
  frames at or below the threshold, and ends at its last frame above the threshold;
- an event still open when the scores end is closed at the last frame above the threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class AlertEvent:
    """One alert: frames start..end inclusive, its highest score and where it was."""

    start_frame: int
    end_frame: int
    peak_frame: int
    peak_score: float
    raised_frame: int

    @property
    def n_frames(self) -> int:
        return self.end_frame - self.start_frame + 1

    def to_dict(self, fps: float | None = None) -> dict:
        """JSON-ready; with ``fps`` also the times in seconds from the first frame."""
        d = asdict(self)
        d["n_frames"] = self.n_frames
        if fps:
            for key in ("start", "end", "peak", "raised"):
                d[f"{key}_s"] = round(d[f"{key}_frame"] / float(fps), 3)
        return d


class AlertTracker:
    """Feed scores one frame at a time; ``update`` returns an event when it closes.

    ``active`` says whether an alert is open right now (what a live display shows), ``opened``
    whether the last update raised one.
    """

    def __init__(self, threshold: float, *, min_frames: int = 3, merge_gap: int = 5):
        if not math.isfinite(float(threshold)):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        if min_frames < 1 or merge_gap < 0:
            raise ValueError(f"min_frames must be >= 1 and merge_gap >= 0, got {min_frames}, {merge_gap}")
        self.threshold = float(threshold)
        self.min_frames = int(min_frames)
        self.merge_gap = int(merge_gap)
        self.frame = -1
        self.active = False
        self.opened = False
        self._run_start = None      # first frame of the current run above threshold
        self._event = None          # [start, last_above, peak_frame, peak_score, raised]
        self._below = 0             # consecutive frames at/below threshold while an event is open
        self._run_peak = (None, -math.inf)

    def update(self, score: float) -> AlertEvent | None:
        self.frame += 1
        self.opened = False
        score = float(score)
        above = score > self.threshold
        t = self.frame
        if self._event is not None:
            if above:
                ev = self._event
                ev[1] = t
                if score > ev[3]:
                    ev[2], ev[3] = t, score
                self._below = 0
                return None
            self._below += 1
            if self._below > self.merge_gap:
                return self._close()
            return None
        if not above:
            self._run_start, self._run_peak = None, (None, -math.inf)
            return None
        if self._run_start is None:
            self._run_start = t
        if score > self._run_peak[1]:
            self._run_peak = (t, score)
        if t - self._run_start + 1 >= self.min_frames:
            self._event = [self._run_start, t, self._run_peak[0], self._run_peak[1], t]
            self._below = 0
            self.active = self.opened = True
            self._run_start, self._run_peak = None, (None, -math.inf)
        return None

    def _close(self) -> AlertEvent:
        start, end, peak_frame, peak_score, raised = self._event
        self._event, self._below, self.active = None, 0, False
        return AlertEvent(int(start), int(end), int(peak_frame), float(peak_score), int(raised))

    def finish(self) -> AlertEvent | None:
        """End of the stream: close the open event, if any."""
        self._run_start, self._run_peak = None, (None, -math.inf)
        return self._close() if self._event is not None else None


def alert_events(scores, threshold: float, *, min_frames: int = 3, merge_gap: int = 5) -> list[AlertEvent]:
    """Every alert event of a score sequence (see the module docstring for the rules)."""
    tracker = AlertTracker(threshold, min_frames=min_frames, merge_gap=merge_gap)
    events = []
    for s in np.asarray(scores, dtype=np.float64).reshape(-1):
        if not math.isfinite(s):
            raise ValueError("scores contain NaN or infinite values")
        ev = tracker.update(s)
        if ev is not None:
            events.append(ev)
    last = tracker.finish()
    if last is not None:
        events.append(last)
    return events
