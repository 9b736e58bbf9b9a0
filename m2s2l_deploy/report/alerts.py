"""Alert events from per-frame anomaly scores, as a live system raises them.

Why a state machine: a camera feed cannot look ahead, so an alert must be decidable at the frame
it is raised. ``AlertTracker`` consumes one score at a time; ``alert_events`` runs it over a whole
score sequence and gives exactly the events a live run would have produced; ``LiveAlerts`` runs
it on a stream (``watch``), where frames carry their own index and time.

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


def score_alerts(events: list[AlertEvent], truth: list[tuple[int, int]]) -> dict:
    """How alerts fare against labelled events, ``truth`` = inclusive (start, end) frame ranges
    (``data.readers.label_runs`` of a video's labels): the alerting view of a test video, next to AUC.

    A labelled event is found when an alert overlaps it; its delay is the frames from the
    event's first labelled frame to the raising frame of the first alert that overlaps it
    (0 when the alert was already raised). An alert that overlaps no labelled event is false.
    """
    overlaps = [[e for e in events if e.start_frame <= end and e.end_frame >= start] for start, end in truth]
    found = [(start, hits) for (start, _), hits in zip(truth, overlaps) if hits]
    false = [e for e in events if not any(e.start_frame <= end and e.end_frame >= start for start, end in truth)]
    delays = [max(0, min(h.raised_frame for h in hits) - start) for start, hits in found]
    return {"events": len(truth), "found": len(found), "missed": len(truth) - len(found),
            "alerts": len(events), "false_alerts": len(false), "delay_frames": delays}


class LiveAlerts:
    """``AlertTracker`` on a live stream, giving each alert's start and end as an event dict at once.

    Why a wrapper: on a stream, frames carry their own index and wall-clock time (dropped frames
    leave holes, so the tracker's update count is not the frame index), and an operator needs the
    start when it is raised, not when the alert is over. ``update(score, frame)`` takes the frame's
    record (``{"frame": k, "wall": time.time(), ...}``) and an optional ``payload`` (what a snapshot
    needs); it returns the events that frame caused: ``alert_start`` (at the raising frame, with the
    peak so far) or ``alert_end`` (when the alert closed, with its peak). Events carry ``_payload``,
    the peak frame's payload, for the caller to take off. Memory stays bounded: records are kept
    only from the open alert's start (or the current run above the threshold).
    """

    def __init__(self, threshold: float, *, min_frames: int = 3, merge_gap: int = 5, source: str = ""):
        self.tracker = AlertTracker(threshold, min_frames=min_frames, merge_gap=merge_gap)
        self.threshold = float(threshold)
        self.source = source
        self.closed: list[dict] = []       # every alert_end so far (the run's alert list)
        self._records: dict[int, dict] = {}
        self._start: int | None = None     # update count of the open alert's first frame
        self._peak = None                  # (update count, score, payload) of the current run/alert's peak

    @property
    def active(self) -> bool:
        return self.tracker.active

    def update(self, score: float, frame: dict, payload=None) -> list[dict]:
        tr = self.tracker
        above = float(score) > self.threshold
        if tr.active or above:               # the same peak rule as the tracker (strictly higher wins)
            if above and (self._peak is None or score > self._peak[1]):
                self._peak = (tr.frame + 1, float(score), payload)
        else:
            self._peak = None
        ev = tr.update(score)
        n = tr.frame
        self._records[n] = {**frame, "score": float(score)}
        events = []
        if ev is not None:
            events.append(self._end(ev, "scores fell below the threshold"))
        if tr.opened:
            self._start = n - tr.min_frames + 1
            events.append(self._event("alert_start", n, self._start, n, None))
        keep = self._start if tr.active else n - tr.min_frames + 1
        for old in [c for c in self._records if c < keep]:
            del self._records[old]
        return events

    def finish(self, reason: str) -> list[dict]:
        """Close the open alert (the stream was lost, ended or stopped): its end event, if any."""
        ev = self.tracker.finish()
        events = [self._end(ev, reason)] if ev is not None else []
        self._peak, self._start = None, None
        self._records = {n: r for n, r in self._records.items() if n == self.tracker.frame}
        return events

    def _end(self, ev: AlertEvent, reason: str) -> dict:
        event = self._event("alert_end", ev.end_frame, ev.start_frame, ev.raised_frame, ev.end_frame,
                            peak_at=ev.peak_frame, reason=reason)
        self.closed.append({k: v for k, v in event.items() if k != "_payload"})
        self._peak, self._start = None, None
        return event

    def _event(self, kind: str, at: int, start: int, raised: int, end: int | None, peak_at: int | None = None,
               reason: str | None = None) -> dict:
        rec = self._records
        peak = self._peak
        if peak_at is None:
            peak_at = peak[0]
        event = {"event": kind, "source": self.source, "frame": rec[at]["frame"], "time": iso_time(rec[at]["wall"]),
                 "score": rec[at]["score"], "threshold": self.threshold,
                 "start_frame": rec[start]["frame"], "raised_frame": rec[raised]["frame"],
                 "peak": {"frame": rec[peak_at]["frame"], "score": rec[peak_at]["score"],
                          "time": iso_time(rec[peak_at]["wall"])}}
        if end is not None:
            event.update(end_frame=rec[end]["frame"], duration_s=round(rec[end]["wall"] - rec[start]["wall"], 3),
                         reason=reason)
        event["_payload"] = peak[2] if peak is not None and peak[0] == peak_at else None
        return event


def iso_time(wall: float) -> str:
    """A wall-clock time (``time.time()``) as local ISO 8601 with its UTC offset, to the millisecond."""
    from datetime import datetime
    return datetime.fromtimestamp(wall).astimezone().isoformat(timespec="milliseconds")
