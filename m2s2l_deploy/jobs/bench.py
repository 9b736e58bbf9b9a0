"""``bench``: one source (a video file, a folder of frames, a stream or camera for --max-frames
frames) through any runner, as a live system would see it.

Pipeline: ``data.stream.VideoReader`` decodes on a background thread and resamples to the model's
training frame rate (motion scale depends on it); here each frame gets the input contract, and
the shared clip loop (``clip_loop.scored_batches``) batches sliding clips through the runner and
decides one causal score per frame, in order. Frames 0..T-2 have no full history: they take the
first decidable score and are flagged. Alerts come from ``report.alerts.AlertTracker`` fed frame
by frame, so they are the events a live run raises (and are logged the moment they are raised).

Timing (what each number means is also written into the JSON under ``timing.how``):
- ``latency_ms`` p50/p90/p99: per clip, the wall time of the ``runner.infer`` call that scored it
  (with ``--batch 1`` this is the model latency of every frame);
- ``fps_model``: clips / total time inside ``runner.infer``;
- ``fps_e2e``: scored frames / wall time from the first decode to the last score, everything
  included (decode, resampling, contract, inference, alerts, annotation when asked for).
Warm-up calls on zero clips run before the clock starts.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..contract import prepare_frames
from ..data.sources import parse_source
from ..data.stream import VideoReader, quiet_opencv
from ..data.video import video_info
from ..errors import DataError, UserError
from ..files import atomic_write_json, output_path
from ..report.alerts import AlertEvent, AlertTracker
from ..report.outputs import ANNOTATE_CODECS, AnnotatedWriter, write_scores_csv
from ..report.plots import plot_bench_scores
from .clip_loop import scored_batches

DEFAULT_MIN_FRAMES = 3
DEFAULT_MERGE_GAP = 5


# -- the run -------------------------------------------------------------------------------------
@dataclass
class BenchResult:
    """Per-frame results of one bench run (frame k = k-th frame after resampling)."""

    video: str
    runner: str
    fps: float | None                      # rate the scores are at (the model's, after resampling)
    scores: np.ndarray                     # (N,) causal frame scores
    decidable: np.ndarray                  # (N,) False for the first T-1 frames (first decidable score)
    source_index: np.ndarray               # (N,) frame index in the source video
    latencies_ms: np.ndarray               # (clips,) per clip: wall time of the infer call that scored it
    alerts: list[AlertEvent]
    threshold: float | None
    threshold_source: str
    summary: dict = field(default_factory=dict)


def resolve_threshold(spec, runner) -> tuple[float | None, str]:
    """``auto`` -> the stored calibration; a number -> itself; None -> no alerts."""
    if spec is None:
        return None, "not used"
    if isinstance(spec, (int, float)):
        value = float(spec)
        source = "given"
    elif str(spec).strip().lower() == "auto":       # calibrated on normal footage, stored with the model
        return runner.threshold, runner.threshold_source
    else:
        try:
            value = float(spec)
        except ValueError:
            raise UserError(f"--threshold must be 'auto' or a number, got '{spec}'") from None
        source = "given"
    if not math.isfinite(value):
        raise UserError(f"--threshold must be a finite number, got '{spec}'")
    return value, source


def warm_up(runner, batch: int, calls: int) -> None:
    c = runner.contract
    shapes = {batch, 1}
    for b in sorted(shapes, reverse=True):
        clips = np.zeros((b, c.clip_len, c.channels, c.height, c.width), np.float32)
        for _ in range(max(0, calls)):
            runner.infer(clips)
    runner.reset_stream()


def _percentiles(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3),
            "mean": round(float(v.mean()), 3)}


def bench_video(runner, video, *, batch: int = 1, max_frames: int | None = None, threshold="auto",
                min_frames: int = DEFAULT_MIN_FRAMES, merge_gap: int = DEFAULT_MERGE_GAP, warmup: int = 3,
                annotate: Path | None = None, allow_truncated: bool = False, fps: float | None = None,
                progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] = print) -> BenchResult:
    """Score ``video`` (SOURCE text or a ``data.sources.Source``; ``fps``: a folder's frame rate)
    with ``runner`` frame by frame; see the module docstring."""
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    if max_frames is not None and max_frames < 1:
        raise UserError(f"--max-frames must be >= 1, got {max_frames}")
    if warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {warmup}")
    contract = runner.contract
    T = contract.clip_len
    thr, thr_source = resolve_threshold(threshold, runner)
    if threshold is not None and thr is None:
        log("warning: no calibrated threshold is stored with this model: no alerts (pass --threshold X)")
    reader = VideoReader(video, target_fps=contract.fps, max_frames=max_frames, allow_truncated=allow_truncated,
                         fps=fps)
    video = reader.source.name                 # what reports show (a URL's credentials masked)
    if contract.fps and not reader.src_fps and not reader.source.live:      # streams go by their timestamps
        hint = " (give --fps)" if reader.source.kind == "folder" else ""
        log(f"warning: {video} does not state its frame rate{hint}; assuming the model's {contract.fps:g} fps")
    expected = reader.expected_frames()
    if expected < T:
        reader.close()
        raise DataError(f"{video} gives {expected} frames at {contract.fps or reader.src_fps or 0:g} fps, "
                        f"fewer than one clip of {T} frames")
    out_fps = contract.fps if reader.resampled else (reader.src_fps or contract.fps)

    warm_up(runner, batch, warmup)

    tracker = AlertTracker(thr, min_frames=min_frames, merge_gap=merge_gap) if thr is not None else None
    writer = None
    scores: list[float] = []
    sources: list[int] = []
    latencies: list[float] = []
    alerts: list[AlertEvent] = []
    raw_pending: deque = deque()           # (k, frame) awaiting their score, for the annotated video
    model_s = prep_s = 0.0

    def emit(k: int, score: float) -> None:
        """Frame k's score is known: alerts (live) and annotation, in frame order."""
        nonlocal writer
        scores.append(score)
        if tracker is not None:
            ev = tracker.update(score)
            if tracker.opened:
                log(f"ALERT raised at frame {k}" + (f" ({k / out_fps:.1f} s)" if out_fps else "")
                    + f": score {score:.2f} > {thr:.2f}")
            if ev is not None:
                alerts.append(ev)
        if annotate is not None:
            kk, frame = raw_pending.popleft()
            if writer is None:                # a stream tells its frame size with its first frame
                writer = AnnotatedWriter(annotate, out_fps or 10.0, (frame.shape[1], frame.shape[0]))
            writer.write(frame, kk, score, thr, kk >= T - 1, bool(tracker is not None and tracker.active))

    def prepared_frames():
        """The decoder's frames under the input contract, in order (timed, sources kept)."""
        nonlocal prep_s
        for k, src, frame in reader:
            t0 = time.perf_counter()
            prepared = prepare_frames(frame, contract)[0]
            prep_s += time.perf_counter() - t0
            sources.append(src)
            if annotate is not None:
                raw_pending.append((k, frame))
            yield prepared

    t_start = time.perf_counter()
    try:
        for b in scored_batches(runner, prepared_frames(), batch):
            model_s += b.seconds
            if not np.all(np.isfinite(b.scores)):
                raise DataError(f"{runner.name} returned NaN or infinite scores on {video}")
            latencies.extend([b.seconds * 1000.0] * len(b.targets))
            for k, s in b.decided():
                emit(k, s)
            if progress is not None:
                progress(len(scores), max(expected, len(scores)))
        n_frames = len(sources)
        if tracker is not None:
            last = tracker.finish()
            if last is not None:
                alerts.append(last)
        if n_frames < T:
            raise DataError(f"{video} gives {n_frames} frames at {out_fps or 0:g} fps, fewer than one clip of {T} frames")
        wall = time.perf_counter() - t_start
        if writer is not None:
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        reader.close()
    if reader.truncated:
        log(f"warning: {video} is truncated: scored the {reader.n_decoded} decodable frames")
    if reader.lost:
        log(f"warning: {video}: stream lost ({reader.lost}): scored the {reader.n_decoded} frames before it")

    n_clips = len(latencies)
    decidable = np.arange(n_frames) >= T - 1
    result = BenchResult(video=str(video), runner=runner.name, fps=out_fps,
                         scores=np.asarray(scores, np.float32), decidable=decidable,
                         source_index=np.asarray(sources, np.int64), latencies_ms=np.asarray(latencies),
                         alerts=alerts, threshold=thr, threshold_source=thr_source)
    s = result.scores
    result.summary = {
        "video": str(video),
        "video_info": {**reader.info, "frames_decoded": reader.n_decoded},
        "runner": result.runner,
        "model_fps": contract.fps,
        "scores_fps": out_fps,
        "resampled": reader.resampled,
        "batch": batch,
        "warmup_calls": warmup,
        "n_frames": n_frames,
        "n_clips": n_clips,
        "first_decidable": T - 1,
        "n_flagged_frames": int((~decidable).sum()),
        "threshold": thr,
        "threshold_source": thr_source,
        "alert_rules": {"min_frames": min_frames, "merge_gap": merge_gap},
        "alerts": [ev.to_dict(out_fps) for ev in alerts],
        "score": {"min": float(s.min()), "max": float(s.max()), "mean": float(s.mean()),
                  "frames_above_threshold": int((s > thr).sum()) if thr is not None else None},
        "latency_ms": _percentiles(latencies),
        "fps_model": round(n_clips / model_s, 2) if model_s > 0 else None,
        "fps_e2e": round(n_frames / wall, 2) if wall > 0 else None,
        "timing": {"wall_s": round(wall, 3), "model_s": round(model_s, 3), "decode_s": round(reader.decode_s, 3),
                   "preprocess_s": round(prep_s, 3),
                   "how": ("latency_ms: per clip, wall time of the runner.infer call that scored it; fps_model: "
                           "clips / time inside runner.infer; fps_e2e: scored frames / wall time from first decode "
                           "to last score (decode on a background thread, contract, inference, alerts"
                           + (", annotation" if writer is not None else "") + f"); {warmup} warm-up calls before timing")},
    }
    return result


@dataclass
class BenchOutputs:
    """Files a bench run writes (each optional): JSON summary, per-frame CSV, plot, annotated video."""

    json: Path | None = None
    scores_csv: Path | None = None
    plot: Path | None = None
    annotate: Path | None = None

    def checked(self) -> "BenchOutputs":
        """The same outputs, each checked writable with the right suffix, no two the same file."""
        out = BenchOutputs(output_path(self.json, "JSON output", (".json",)),
                           output_path(self.scores_csv, "scores CSV", (".csv",)),
                           output_path(self.plot, "plot", (".png",)),
                           output_path(self.annotate, "annotated video", tuple(ANNOTATE_CODECS)))
        given = [p for p in (out.json, out.scores_csv, out.plot, out.annotate) if p is not None]
        if len({p.resolve() for p in given}) != len(given):
            raise UserError("two outputs point to the same file")
        return out


def run_bench(video, runner, outputs: BenchOutputs | None = None, *, labels=None,
              progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] = print,
              **settings) -> dict:
    """Bench one video end to end and write the asked-for outputs; returns the JSON summary.

    ``runner``: a Runner, or a ``runners.factory.RunnerSpec`` built only once the outputs and the
    video have been checked (a bad video fails before the model is loaded). ``settings`` are
    ``bench_video``'s (batch, max_frames, threshold, min_frames, merge_gap, warmup,
    allow_truncated, fps). Outputs are checked before any work and written atomically after the run,
    so a failure leaves none of them behind. ``labels`` (0/1 per scored frame) only shade the plot.
    """
    from ..runners.factory import RunnerSpec, describe_machine

    outputs = (outputs or BenchOutputs()).checked()
    json_out, scores_csv, plot, annotate = outputs.json, outputs.scores_csv, outputs.plot, outputs.annotate
    quiet_opencv()
    source = parse_source(video, settings.get("fps"))     # a bad source fails before the model is loaded
    if source.kind == "file":
        video_info(source.target)
    if source.live and settings.get("max_frames") is None:
        raise UserError(f"{source.name} is a live source: give --max-frames N (`watch` scores a stream until stopped)")
    if isinstance(runner, RunnerSpec):
        runner = runner.make()
    result = bench_video(runner, source, annotate=annotate, progress=progress, log=log, **settings)
    summary = dict(result.summary)
    summary["machine"] = describe_machine(runner)
    written = {"annotated_video": str(annotate)} if annotate is not None else {}
    try:
        if scores_csv is not None:
            write_scores_csv(scores_csv, result)
            written["scores_csv"] = str(scores_csv)
        if plot is not None:
            plot_bench_scores(plot, result, labels=labels)
            written["plot"] = str(plot)
        summary["outputs"] = written
        if json_out is not None:
            try:
                atomic_write_json(json_out, summary)
            except OSError as e:
                raise UserError(f"cannot write JSON output {json_out}: {e.strerror or e}") from None
            written["json"] = str(json_out)
    except BaseException:
        for p in written.values():           # all or nothing
            Path(p).unlink(missing_ok=True)
        raise
    return summary
