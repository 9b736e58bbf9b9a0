"""``bench``: one video through any runner, as a live system would see it (DESIGN.md §8).

Pipeline: OpenCV decodes on a background thread and resamples to the model's training frame
rate (motion scale depends on it); the main thread applies the input contract to each frame,
keeps the last T frames, batches sliding clips, runs the runner, and emits one causal score per
frame in order. Frames 0..T-2 have no full history: they take the first decidable score and are
flagged. Alerts come from ``alerts.AlertTracker`` fed frame by frame, so they are the events a
live run raises (and are logged the moment they are raised).

Timing (what each number means is also written into the JSON under ``timing.how``):
- ``latency_ms`` p50/p90/p99: per clip, the wall time of the ``runner.infer`` call that scored it
  (with ``--batch 1`` this is the model latency of every frame);
- ``fps_model``: clips / total time inside ``runner.infer``;
- ``fps_e2e``: scored frames / wall time from the first decode to the last score, everything
  included (decode, resampling, contract, inference, alerts, annotation when asked for).
Warm-up calls on zero clips run before the clock starts.
"""

from __future__ import annotations

import csv
import math
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

# ffmpeg prints decoder complaints (corrupt frames, missing atoms) straight to stderr; our errors say
# it in one line instead. Must be set before OpenCV first opens a video; a user's own value wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import numpy as np  # noqa: E402

from .alerts import AlertEvent, AlertTracker  # noqa: E402
from .contract import prepare_frames, resample_indices  # noqa: E402
from .data.video import iter_video, video_info  # noqa: E402
from .errors import DataError, UserError  # noqa: E402
from .model.checkpoint import atomic_write_bytes, atomic_write_json  # noqa: E402

# Containers whose frame count comes from an index (exact): decoding fewer frames means damage.
EXACT_COUNT_EXTS = (".avi", ".mp4", ".mov", ".m4v")
ANNOTATE_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
DEFAULT_MIN_FRAMES = 3
DEFAULT_MERGE_GAP = 5


# -- decoding ------------------------------------------------------------------------------------
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


# -- outputs -------------------------------------------------------------------------------------
def check_output_path(path, what: str, suffixes: tuple[str, ...] | None = None) -> Path | None:
    """Fail before any work when an output cannot be written (nothing is created here)."""
    if path is None:
        return None
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{what} {path} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    ancestor = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
    if ancestor is None or not ancestor.is_dir():
        raise UserError(f"cannot write {what} {path}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {path}: {ancestor} is not writable")
    return path


def _write_guarded(path: Path, what: str, write) -> None:
    try:
        atomic_write_bytes(path, write)
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {e.strerror or e}") from None


def write_scores_csv(path: Path, result: "BenchResult") -> None:
    """frame, source_frame, time_s, score, decidable (0 = no full history yet), in_alert."""
    in_alert = np.zeros(len(result.scores), bool)
    for ev in result.alerts:
        in_alert[ev.start_frame:ev.end_frame + 1] = True
    fps = result.fps or 0.0

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["frame", "source_frame", "time_s", "score", "decidable", "in_alert"])
            for k, (src, s, d, a) in enumerate(zip(result.source_index, result.scores, result.decidable, in_alert)):
                w.writerow([k, int(src), f"{k / fps:.3f}" if fps else "", f"{float(s):.6g}", int(d), int(a)])
    _write_guarded(path, "scores CSV", write)


def plot_scores(path: Path, result: "BenchResult", labels: np.ndarray | None = None, title: str | None = None) -> None:
    """Score curve with the threshold, alert events, frames without full history and optional labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.scores)
    x = np.arange(n)
    fig, ax = plt.subplots(figsize=(9, 2.8))
    lo, hi = float(np.min(result.scores)), float(np.max(result.scores))
    if result.threshold is not None:
        lo, hi = min(lo, result.threshold), max(hi, result.threshold)
    pad = 0.05 * (hi - lo or 1.0)
    if labels is not None:
        lab = np.asarray(labels[:n]).astype(bool)
        ax.fill_between(np.arange(len(lab)), lo - pad, hi + pad, where=lab, step="mid", color="tab:orange",
                        alpha=0.25, label="labelled anomaly")
    for i, ev in enumerate(result.alerts):
        ax.axvspan(ev.start_frame - 0.5, ev.end_frame + 0.5, color="tab:red", alpha=0.18,
                   label="alert" if i == 0 else None)
    undecided = ~result.decidable
    if undecided.any():
        ax.axvspan(-0.5, int(np.nonzero(undecided)[0][-1]) + 0.5, color="0.8", label="no full history")
    ax.plot(x, result.scores, lw=1.1, color="tab:blue", label="anomaly score (causal)")
    if result.threshold is not None:
        ax.axhline(result.threshold, color="tab:red", lw=0.9, ls="--", label=f"threshold {result.threshold:.2f}")
    ax.set_xlim(-0.5, max(n - 0.5, 0.5))
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(f"frame (at {result.fps:g} fps)" if result.fps else "frame")
    ax.set_ylabel("score (normal-footage SDs)", fontsize=8)
    ax.set_title(title or Path(result.video).name, fontsize=9)
    ax.legend(loc="upper right", fontsize=7, ncol=3)
    fig.tight_layout()
    try:
        _write_guarded(path, "plot", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


class AnnotatedWriter:
    """Writes the scored frames with the score, threshold and live alert state drawn on them.

    Writes to a hidden temporary file beside the target and renames it on ``commit``; ``abort``
    removes it, so a failed run leaves no partial video.
    """

    def __init__(self, path: Path, fps: float, size_wh: tuple[int, int]):
        import cv2
        self.cv2 = cv2
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}{self.path.suffix}")
        codec = ANNOTATE_CODECS[self.path.suffix.lower()]
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*codec), float(fps or 10.0), size_wh)
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise UserError(f"OpenCV cannot write {codec} video to {self.path}")
        self.w, self.h = size_wh

    def write(self, frame: np.ndarray, k: int, score: float, threshold: float | None, decidable: bool,
              alert: bool) -> None:
        cv2 = self.cv2
        img = frame.copy()
        scale = max(0.35, self.w / 640.0)
        bar_h = int(22 * scale) + 4
        cv2.rectangle(img, (0, 0), (self.w, bar_h), (0, 0, 0), -1)
        text = f"#{k} score {score:+.2f}"
        if threshold is not None:
            text += f" / thr {threshold:.2f}"
        if not decidable:
            text += " (no full history)"
        colour = (0, 0, 255) if alert else (255, 255, 255)
        cv2.putText(img, text, (4, bar_h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, colour, 1, cv2.LINE_AA)
        if alert:
            t = max(2, int(4 * scale))
            cv2.rectangle(img, (0, 0), (self.w - 1, self.h - 1), (0, 0, 255), t)
            cv2.putText(img, "ALERT", (4, bar_h + int(24 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale,
                        (0, 0, 255), 2, cv2.LINE_AA)
        self.writer.write(img)

    def commit(self) -> None:
        self.writer.release()
        try:
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write annotated video {self.path}: {e.strerror or e}") from None

    def abort(self) -> None:
        self.writer.release()
        self.tmp.unlink(missing_ok=True)


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


def calibrated_threshold(runner) -> tuple[float | None, str]:
    """The alert threshold stored with the model (calibrated on normal footage), and where it came from."""
    value = getattr(runner, "threshold", None)
    if value is not None:
        return float(value), f"{getattr(runner, 'name', 'runner')} (stored threshold)"
    ckpt = getattr(runner, "checkpoint", None)
    if ckpt is not None and getattr(ckpt, "threshold", None) is not None:
        return float(ckpt.threshold), f"checkpoint calibration ({ckpt.path / 'config.json'})"
    meta = getattr(runner, "metadata", None) or {}
    if meta.get("threshold") is not None:
        return float(meta["threshold"]), "ONNX metadata: the checkpoint's calibration"
    sidecar = getattr(runner, "sidecar", None) or {}
    if isinstance(sidecar, dict) and sidecar.get("threshold") is not None:
        return float(sidecar["threshold"]), "engine sidecar"
    return None, "none stored"


def resolve_threshold(spec, runner) -> tuple[float | None, str]:
    """``auto`` -> the stored calibration; a number -> itself; None -> no alerts."""
    if spec is None:
        return None, "not used"
    if isinstance(spec, (int, float)):
        value = float(spec)
        source = "given"
    elif str(spec).strip().lower() == "auto":
        return calibrated_threshold(runner)
    else:
        try:
            value = float(spec)
        except ValueError:
            raise UserError(f"--threshold must be 'auto' or a number, got '{spec}'") from None
        source = "given"
    if not math.isfinite(value):
        raise UserError(f"--threshold must be a finite number, got '{spec}'")
    return value, source


def _warm_up(runner, batch: int, calls: int) -> None:
    c = runner.contract
    shapes = {batch, 1}
    for b in sorted(shapes, reverse=True):
        clips = np.zeros((b, c.clip_len, c.channels, c.height, c.width), np.float32)
        for _ in range(max(0, calls)):
            runner.infer(clips)
    if hasattr(runner, "reset_stream"):
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
                annotate: Path | None = None, allow_truncated: bool = False,
                progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] = print) -> BenchResult:
    """Score ``video`` with ``runner`` frame by frame; see the module docstring."""
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
    reader = VideoReader(video, target_fps=contract.fps, max_frames=max_frames, allow_truncated=allow_truncated)
    if contract.fps and not reader.src_fps:
        log(f"warning: {video} does not state its frame rate; assuming the model's {contract.fps:g} fps")
    expected = reader.expected_frames()
    if expected < T:
        raise DataError(f"{video} gives {expected} frames at {contract.fps or reader.src_fps or 0:g} fps, "
                        f"fewer than one clip of {T} frames")
    out_fps = contract.fps if reader.resampled else (reader.src_fps or contract.fps)

    _warm_up(runner, batch, warmup)

    tracker = AlertTracker(thr, min_frames=min_frames, merge_gap=merge_gap) if thr is not None else None
    writer = None
    if annotate is not None:
        writer = AnnotatedWriter(annotate, out_fps or 10.0, (reader.info["width"], reader.info["height"]))
    scores: list[float] = []
    sources: list[int] = []
    latencies: list[float] = []
    alerts: list[AlertEvent] = []
    window: deque = deque(maxlen=T)
    raw_pending: deque = deque()           # (k, frame) awaiting their score, for the annotated video
    clips, targets = [], []
    model_s = prep_s = 0.0
    n_frames = 0

    def emit(k: int, score: float) -> None:
        """Frame k's score is known: alerts (live) and annotation, in frame order."""
        scores.append(score)
        if tracker is not None:
            ev = tracker.update(score)
            if tracker.opened:
                log(f"ALERT raised at frame {k}" + (f" ({k / out_fps:.1f} s)" if out_fps else "")
                    + f": score {score:.2f} > {thr:.2f}")
            if ev is not None:
                alerts.append(ev)
        if writer is not None:
            kk, frame = raw_pending.popleft()
            writer.write(frame, kk, score, thr, kk >= T - 1, bool(tracker is not None and tracker.active))

    def flush() -> None:
        nonlocal model_s
        t0 = time.perf_counter()
        out = runner.infer(np.stack(clips))
        dt = time.perf_counter() - t0
        model_s += dt
        fs = np.asarray(out["frame_score"], dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(fs)):
            raise DataError(f"{getattr(runner, 'name', 'runner')} returned NaN or infinite scores on {video}")
        for k, s in zip(targets, fs):
            latencies.append(dt * 1000.0)
            if k == T - 1:
                for _ in range(T - 1):       # frames before the first full clip: first decidable score
                    emit(len(scores), float(s))
            emit(k, float(s))
        if progress is not None:
            progress(len(scores), max(expected, len(scores)))
        clips.clear()
        targets.clear()

    t_start = time.perf_counter()
    try:
        for k, src, frame in reader:
            t0 = time.perf_counter()
            window.append(prepare_frames(frame, contract)[0])
            prep_s += time.perf_counter() - t0
            sources.append(src)
            n_frames += 1
            if writer is not None:
                raw_pending.append((k, frame))
            if len(window) == T:
                clips.append(np.stack(window))
                targets.append(k)
                if len(clips) == batch:
                    flush()
        if clips:
            flush()
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

    n_clips = len(latencies)
    decidable = np.arange(n_frames) >= T - 1
    result = BenchResult(video=str(video), runner=getattr(runner, "name", type(runner).__name__), fps=out_fps,
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


def run_bench(video, *, checkpoint=None, onnx=None, engine=None, backend: str | None = None, device: str = "cpu",
              threads: int | None = None, dtype: str = "fp32", cuda_graph: bool = False, compile: bool = False,
              batch: int = 1, max_frames: int | None = None, threshold="auto",
              min_frames: int = DEFAULT_MIN_FRAMES, merge_gap: int = DEFAULT_MERGE_GAP, warmup: int = 3,
              json_out=None, scores_csv=None, plot=None, annotate=None, allow_truncated: bool = False,
              labels=None, runner=None, progress: Callable[[int, int], None] | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Bench one video end to end and write the asked-for outputs; returns the JSON summary.

    Outputs are checked before any work and written atomically after the run, so a failure leaves
    none of them behind. ``labels`` (0/1 per scored frame, optional) only shade the plot.
    """
    from .runners.factory import describe_machine, make_runner

    json_out = check_output_path(json_out, "JSON output", (".json",))
    scores_csv = check_output_path(scores_csv, "scores CSV", (".csv",))
    plot = check_output_path(plot, "plot", (".png",))
    annotate = check_output_path(annotate, "annotated video", tuple(ANNOTATE_CODECS))
    outputs = [p for p in (json_out, scores_csv, plot, annotate) if p is not None]
    if len({p.resolve() for p in outputs}) != len(outputs):
        raise UserError("two outputs point to the same file")
    quiet_opencv()
    video_info(video)                      # a bad video fails before the model is loaded
    if runner is None:
        runner = make_runner(checkpoint=checkpoint, onnx=onnx, engine=engine, backend=backend, device=device,
                             threads=threads, dtype=dtype, cuda_graph=cuda_graph, compile=compile)
    result = bench_video(runner, video, batch=batch, max_frames=max_frames, threshold=threshold,
                         min_frames=min_frames, merge_gap=merge_gap, warmup=warmup, annotate=annotate,
                         allow_truncated=allow_truncated, progress=progress, log=log)
    summary = dict(result.summary)
    summary["machine"] = describe_machine(runner)
    written = {"annotated_video": str(annotate)} if annotate is not None else {}
    try:
        if scores_csv is not None:
            write_scores_csv(scores_csv, result)
            written["scores_csv"] = str(scores_csv)
        if plot is not None:
            plot_scores(plot, result, labels=labels)
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
