"""``watch``: score live sources until stopped, each alert written the moment it is raised.

One run watches several sources at once (cameras, streams, folders, files). Each source has
- a ``data.live.LiveReader`` thread: opens it (retries with backoff), reopens it after a drop or a
  stall and reports the gap, resamples by timestamps to the model's rate, prepares frames with the
  input contract and queues them; a live source's queue drops what the scorer cannot take (counted);
- a scoring thread with a runner of its own (``make_runner`` is called once per source: runners
  may keep stream state, and ONNX Runtime and PyTorch release the GIL, so sources score side by
  side) running the shared clip loop (``clip_loop.scored_batches``) over each run of contiguous
  frames: a gap, a hole in the timestamps or dropped frames end a run, and the next one starts a
  fresh clip history, so a stale frame never pairs with a fresh one;
- its own settings (``SourcePlan``): the threshold (auto = the model's calibration, or a number)
  and an optional region-of-interest mask (``jobs.roi``);
- ``report.alerts.LiveAlerts``, whose start and end events go at once to the shared
  ``report.events.EventLog`` (JSON lines, flushed), optionally with a snapshot of the peak frame
  (``report.snapshots``) and to a ``report.webhook.Webhook`` (a queue that never blocks scoring).
  An alert still open when its stream is lost or jumps in time, ends, or the run stops is closed
  there; dropped frames (the scorer behind) do not close it.

Health per source: frames in (at the model's rate), scored, dropped (scorer behind), unscored (runs
shorter than a clip), latency per frame from reading to score (p50/p99/max, fixed memory), time per
runner call, queue depth now and at most, gaps, timestamp holes.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..contract import prepare_frames
from ..data.live import LiveFrame, LiveReader, StreamBreak
from ..data.sources import Source
from ..errors import UserError
from ..report.alerts import LiveAlerts, iso_time
from ..report.events import EventLog
from ..report.health import Histogram
from ..report.snapshots import write_snapshot
from ..report.webhook import Webhook
from .bench import DEFAULT_MERGE_GAP, DEFAULT_MIN_FRAMES, warm_up, resolve_threshold
from .clip_loop import scored_batches
from .roi import RegionOfInterest


@dataclass
class SourcePlan:
    """One source and its own settings: ``threshold`` ('auto', a number or None) and ``roi`` (mask image)."""

    source: Source
    threshold: object = "auto"
    roi: Path | None = None


@dataclass
class WatchOptions:
    """Settings of the whole run (the CLI's options); ``check`` turns a bad one into one line."""

    batch: int = 1
    min_frames: int = DEFAULT_MIN_FRAMES
    merge_gap: int = DEFAULT_MERGE_GAP
    max_retries: int = 3
    stall_timeout_s: float = 10.0
    queue_frames: int = 16
    backoff_s: float = 0.5
    warmup: int = 1
    duration_s: float | None = None

    def check(self) -> "WatchOptions":
        for name, value, low in (("--batch", self.batch, 1), ("--min-frames", self.min_frames, 1),
                                 ("--merge-gap", self.merge_gap, 0), ("--max-retries", self.max_retries, 0),
                                 ("--queue", self.queue_frames, 1), ("--warmup", self.warmup, 0)):
            if value < low:
                raise UserError(f"{name} must be >= {low}, got {value}")
        if not (math.isfinite(self.stall_timeout_s) and self.stall_timeout_s > 0):
            raise UserError(f"--stall-timeout must be a positive number of seconds, got {self.stall_timeout_s}")
        if self.duration_s is not None and not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise UserError(f"--duration must be a positive number of seconds, got {self.duration_s}")
        return self


class SourceWatch:
    """One source: its reader thread, its runner, its scoring thread, its alerts and health."""

    def __init__(self, plan: SourcePlan, runner, opts: WatchOptions, emit: Callable[[dict], None], *,
                 snapshots: Path | None = None, on_frame: Callable[[str, dict], None] | None = None):
        self.source, self.runner, self.opts, self.emit = plan.source, runner, opts, emit
        self.name = plan.source.name
        self.snapshots, self.on_frame = snapshots, on_frame
        contract = runner.contract
        self.threshold, self.threshold_source = resolve_threshold(plan.threshold, runner)
        self.roi = RegionOfInterest(plan.roi, contract) if plan.roi is not None else None
        if self.roi is not None and self.threshold is None:
            raise UserError(f"{self.name}: a region of interest needs a threshold (this model stores none: "
                            "give --threshold X)")
        self.alerts = (LiveAlerts(self.threshold, min_frames=opts.min_frames, merge_gap=opts.merge_gap,
                                  source=self.name) if self.threshold is not None else None)
        self.reader = LiveReader(plan.source, contract.fps, transform=lambda img: prepare_frames(img, contract)[0],
                                 max_retries=opts.max_retries, stall_timeout_s=opts.stall_timeout_s,
                                 queue_frames=opts.queue_frames, backoff_s=opts.backoff_s, on_event=emit)
        self.scored = self.unscored = self.bad_scores = self.runs = 0
        self.latency, self.infer = Histogram(), Histogram()
        self.last_score: float | None = None
        self.error: str | None = None
        self.bug: BaseException | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._score_thread, name=f"score {self.name}", daemon=True)

    # -- life cycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.reader.start()
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self.reader.stop()

    def join(self, timeout: float) -> None:
        """Wait for the scorer, then the reader. The reader must be gone before the interpreter exits: a
        daemon thread inside OpenCV (decoding or resizing with the GIL released) when Python finalizes
        is torn down from a C++ destructor and aborts the process ("terminate called...")."""
        deadline = time.monotonic() + timeout
        self._thread.join(timeout)
        self.reader.join(max(0.0, deadline - time.monotonic()))

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    # -- scoring -------------------------------------------------------------------------------------
    def _score_thread(self) -> None:
        try:
            self._score()
        except UserError as e:                  # e.g. the server behind --server went away for good
            self.error = str(e)
            self.emit({"event": "source_failed", "source": self.name, "reason": str(e)})
            self.reader.stop()
        except BaseException as e:  # a bug: Watch.run re-raises it with its traceback
            self.bug = e
            self.reader.stop()
        finally:
            reason = "stopped" if self._stopping else self.error or f"source {self.reader.state}"
            self._finish_alerts(reason)

    def _score(self) -> None:
        item = self.reader.get()
        while item is not None:
            if isinstance(item, StreamBreak):
                self._finish_alerts(item.reason)
                item = self.reader.get()
                continue
            self.runs += 1
            self.runner.reset_stream()
            pending: deque = deque()
            after: list = [None]

            def run_of_frames(frame: LiveFrame):
                """Prepared frames while they are contiguous; the item that broke the run goes to ``after``."""
                while True:
                    pending.append(frame)
                    yield frame.prepared
                    following = self.reader.get()
                    if not isinstance(following, LiveFrame) or following.fresh:
                        after[0] = following
                        return
                    frame = following

            for b in scored_batches(self.runner, run_of_frames(item), self.opts.batch):
                self._scored_batch(b, pending)
            self.unscored += len(pending)                  # a run shorter than one clip
            item = after[0]

    def _scored_batch(self, b, pending: deque) -> None:
        T = self.runner.contract.clip_len
        self.infer.add(b.seconds)
        maps = b.outputs.get("score_map")
        for j, model_score in b.decided():
            frame = pending.popleft()
            if not math.isfinite(model_score):
                self.bad_scores += 1
                continue
            smap = np.array(maps[max(j, T - 1) - b.targets[0], 0]) if maps is not None else None
            score = self.roi.score(model_score, smap, self.threshold) if self.roi is not None else model_score
            self.latency.add(time.perf_counter() - frame.arrived)
            self.scored += 1
            self.last_score = score
            if self.alerts is not None:
                for event in self.alerts.update(score, {"frame": frame.k, "wall": frame.wall}, (frame.image, smap)):
                    self._alert(event)
            if self.on_frame is not None:
                self.on_frame(self.name, {"frame": frame.k, "ts": frame.ts, "score": score,
                                          "model_score": model_score, "decidable": j >= T - 1, "run": self.runs})

    def _alert(self, event: dict) -> None:
        payload = event.pop("_payload", None)
        if self.snapshots is not None and payload is not None:
            try:
                event["snapshot"] = str(write_snapshot(self.snapshots, event, payload[0], payload[1],
                                                       self.runner.contract))
            except OSError as e:
                event["snapshot_error"] = e.strerror or str(e)
        self.emit(event)

    def _finish_alerts(self, reason: str) -> None:
        if self.alerts is not None:
            for event in self.alerts.finish(reason):
                self._alert(event)

    # -- reports -------------------------------------------------------------------------------------
    def health(self) -> dict:
        r = self.reader
        state = "failed" if self.error else "stopped" if self._stopping and r.state not in ("failed", "ended") \
            else r.state
        return {"source": self.name, "kind": self.source.kind, "state": state,
                "fps": r.fps, "frames_in": r.frames_in, "scored": self.scored, "dropped": r.dropped,
                "unscored": self.unscored, "queue": r.queue_depth, "queue_max": r.queue_max,
                "latency_ms": self.latency.summary_ms(), "infer_ms": self.infer.summary_ms(),
                "last_score": self.last_score, "threshold": self.threshold,
                "alert_open": bool(self.alerts is not None and self.alerts.active),
                "alerts": len(self.alerts.closed) if self.alerts is not None else 0,
                "gaps": len(r.gaps), "holes": r.holes}

    def summary(self) -> dict:
        return {**self.health(), "opened": self.reader.opened_ever, "error": self.error or (
                    self.reader.error if not self.reader.opened_ever else None),
                "threshold_source": self.threshold_source, "roi": str(self.roi.path) if self.roi else None,
                "bad_scores": self.bad_scores, "clip_histories": self.runs, "gaps": list(self.reader.gaps),
                "alerts": list(self.alerts.closed) if self.alerts is not None else []}


def _describe(event: dict) -> str | None:
    """The one human line an event deserves on the console (None: the JSON line is enough)."""
    kind, name = event["event"], event.get("source", "")
    if kind == "source_opened":
        size = f"{event['size'][0]}x{event['size'][1]}, " if event.get("size") else ""
        return f"{name}: opened ({size}{event['fps']:g} fps)" if event.get("fps") else f"{name}: opened"
    if kind == "source_failed":
        tries = f" (gave up after {event['attempts']} tries)" if event.get("attempts", 1) > 1 else ""
        return f"error: {event['reason']}{tries}"
    if kind == "stream_lost":
        return f"{name}: stream lost ({event['reason']}); reopening"
    if kind == "stream_resumed":
        return f"{name}: resumed after a {event['seconds']:.1f} s gap (~{event['frames_lost']} frames lost)"
    if kind == "source_ended":
        return f"{name}: ended after {event['frames']} frames"
    if kind == "alert_start":
        return (f"ALERT {name} frame {event['frame']}: score {event['score']:.2f} > {event['threshold']:.2f}")
    if kind == "alert_end":
        return (f"alert over: {name} frames {event['start_frame']}-{event['end_frame']}, peak "
                f"{event['peak']['score']:.2f} at frame {event['peak']['frame']} ({event['reason']})")
    return None


class Watch:
    """Several sources scored until stopped; see the module docstring. ``make_runner()`` -> a Runner."""

    def __init__(self, plans: list[SourcePlan], make_runner: Callable[[], object], opts: WatchOptions | None = None,
                 *, events: EventLog | None = None, snapshots: Path | None = None, webhook: Webhook | None = None,
                 on_frame: Callable[[str, dict], None] | None = None, log: Callable[[str], None] = print):
        if not plans:
            raise UserError("give at least one source")
        names = [p.source.name for p in plans]
        if len(set(names)) != len(names):
            raise UserError("the same source is given twice")
        self.opts = (opts or WatchOptions()).check()
        self.events, self.snapshots, self.webhook, self.log = events, snapshots, webhook, log
        self._lock = threading.Lock()
        self.sources: list[SourceWatch] = []
        self.runner_info: dict = {}
        for plan in plans:
            runner = make_runner()
            warm_up(runner, self.opts.batch, self.opts.warmup)
            self.runner_info = runner.describe()
            self.sources.append(SourceWatch(plan, runner, self.opts, self._emit, snapshots=snapshots,
                                            on_frame=on_frame))

    def _emit(self, event: dict) -> None:
        """Every event: the JSON line, the console line, and (alerts) the webhook."""
        if self.events is not None:
            event = self.events.write(event)
        line = _describe(event)
        if line is not None:
            self.log(line)
        if self.webhook is not None and event["event"].startswith("alert_"):
            self.webhook.post(event)

    def health(self) -> list[dict]:
        return [s.health() for s in self.sources]

    def run(self, stop: threading.Event, tick: Callable[[list[dict]], None] | None = None,
            tick_s: float = 0.5) -> dict:
        """Score until ``stop`` is set, ``duration_s`` passed or every source ended; the summary."""
        started, t0 = time.time(), time.monotonic()
        self._emit({"event": "watch_start", "runner": self.runner_info,
                    "sources": [{"source": s.name, "kind": s.source.kind, "threshold": s.threshold,
                                 "threshold_source": s.threshold_source,
                                 "roi": str(s.roi.path) if s.roi else None} for s in self.sources]})
        for s in self.sources:
            s.start()
        reason = "stopped"
        while not stop.wait(tick_s):
            if tick is not None:
                tick(self.health())
            if all(s.finished for s in self.sources):
                reason = "every source ended or failed"
                break
            if self.opts.duration_s is not None and time.monotonic() - t0 >= self.opts.duration_s:
                reason = f"--duration {self.opts.duration_s:g} s"
                break
        for s in self.sources:
            s.stop()
        for s in self.sources:
            s.join(timeout=30.0 + self.opts.stall_timeout_s)
        for s in self.sources:
            if s.bug is not None:
                raise s.bug
        summary = self.summary(reason, started, time.monotonic() - t0)
        self._emit({"event": "watch_stop", "reason": reason, "duration_s": summary["duration_s"],
                    "frames_scored": sum(s["scored"] for s in summary["sources"]),
                    "alerts": sum(len(s["alerts"]) for s in summary["sources"])})
        if self.events is not None:
            summary["events"]["lines"] = self.events.lines
        if self.webhook is not None:
            summary["webhook"] = self.webhook.close()
        return summary

    def summary(self, reason: str, started: float, seconds: float) -> dict:
        return {"started": iso_time(started), "duration_s": round(seconds, 3), "stop_reason": reason,
                "opened_any": any(s.reader.opened_ever for s in self.sources),
                "runner": self.runner_info,
                "settings": {"batch": self.opts.batch, "min_frames": self.opts.min_frames,
                             "merge_gap": self.opts.merge_gap, "max_retries": self.opts.max_retries,
                             "stall_timeout_s": self.opts.stall_timeout_s, "queue_frames": self.opts.queue_frames},
                "latency": "per frame, from reading it to its score (decode excluded, queueing and inference "
                           "included); infer_ms: per runner call",
                "events": {"file": str(self.events.path) if self.events and self.events.path else None,
                           "lines": self.events.lines if self.events else 0},
                "snapshots": str(self.snapshots) if self.snapshots else None,
                "webhook": None, "sources": [s.summary() for s in self.sources]}
