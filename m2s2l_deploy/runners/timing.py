"""One fair way to time runners against each other: same inputs, interleaved, median.

Why not time each runner while it scores a whole test set, one after the other: on a shared
machine the load drifts over minutes, so the runner measured during a busy minute looks slow and
a speed ratio depends on when each side ran (ONNX Runtime measured 0.63x PyTorch that way and
1.10x when the same two runners were timed interleaved). Here every runner gets the same batches
of clips; each batch is run by every runner in turn (the starting runner rotates from batch to
batch, so none always runs right after another), so drift hits all runners alike; untimed
warm-up calls keep one-off costs (allocations, graph setup) out; the median over batches drops
outliers. Only ``runner.infer`` is timed.

Interleaving has a cost of its own: while one runtime runs, the others' thread pools go to sleep,
and the first call after a switch pays for waking them (measured here: PyTorch at batch 1 took
twice as long right after ONNX Runtime as after itself). A deployment runs one runtime, warm; so
each timed call follows an untimed call of the same runner on the previous batch of the stream
(``rewarm``), which also leaves a stateful runner exactly where the stream left it.

Batches are consecutive clips in stream order and a runner's stream is reset where the video
changes: a runner that carries state from one call to the next (split ONNX exports reuse the
features of frames they have already seen) is timed as it runs on a live stream, like for like.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from ..errors import UserError


def timing_batches(videos: list[np.ndarray], clip_len: int, batch: int,
                   n_batches: int = 20) -> list[tuple[int, np.ndarray]]:
    """Up to ``n_batches`` distinct full batches of sliding-window clips, in stream order.

    ``videos`` are prepared frames (N, C, H, W) float32; clip i of a video is frames[i:i+T].
    Each item is (video index, clips (batch, T, C, H, W)); batch k of a video holds its clips
    k*batch .. (k+1)*batch-1, so consecutive batches continue one stream and none spans two
    videos. The clips are read-only views into ``videos`` (no copy; ``time_runners`` makes each
    contiguous once, outside the timed call). Fewer exist on short videos: all of them are taken.
    """
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    if n_batches < 1:
        raise UserError(f"--timing-batches must be >= 1, got {n_batches}")
    out: list[tuple[int, np.ndarray]] = []
    for index, frames in enumerate(videos):
        if len(frames) < clip_len:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(frames, clip_len, axis=0)  # (n, C, H, W, T)
        clips = np.moveaxis(windows, -1, 1)                                            # (n, T, C, H, W)
        for start in range(0, len(clips) - batch + 1, batch):
            if len(out) == n_batches:
                return out
            out.append((index, clips[start:start + batch]))
    if not out:
        longest = max((len(f) for f in videos), default=0)
        raise UserError(f"no test video is long enough for one timing batch of {batch} clips of {clip_len} frames "
                        f"(needs {batch + clip_len - 1} frames, the longest has {longest}): lower --batch, or skip timing with --timing-batches 0")
    return out


def time_runners(runners: dict, batches: list[tuple[int, np.ndarray]], warmup: int = 3,
                 rewarm: bool = True) -> dict[str, dict]:
    """Time ``runners`` (name -> Runner) on ``batches`` from ``timing_batches``, interleaved.

    Returns per runner: ``ms_per_call`` (median), ``ms_per_clip`` (median over batches of call
    time / clips) with ``p10_ms_per_clip`` / ``p90_ms_per_clip``, ``n_batches`` and ``warmup``
    (untimed calls made before, each on the first batch as a new stream). ``rewarm``: right before
    each timed call, an untimed call of the same runner on the previous batch of the same video
    (at a video's first batch: on that batch as a new stream, then the stream is reset).
    """
    if not batches:
        raise UserError("no batches to time")
    if warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {warmup}")
    first = np.array(batches[0][1])
    for runner in runners.values():
        for _ in range(warmup):
            runner.reset_stream()              # each warm-up call a fresh stream: the full work, every time
            runner.infer(first)
        runner.reset_stream()

    names = list(runners)
    call_ms: dict[str, list[float]] = {name: [] for name in names}
    previous_video, previous = batches[0][0], None
    for k, (video, view) in enumerate(batches):
        clips_k = np.array(view)                  # a writable copy, made outside the timer
        new_stream = video != previous_video or previous is None
        start = k % len(names)
        for name in names[start:] + names[:start]:
            runner = runners[name]
            if new_stream:
                runner.reset_stream()
            if rewarm:
                runner.infer(clips_k if new_stream else previous)
                if new_stream:
                    runner.reset_stream()
            t0 = time.perf_counter()
            runner.infer(clips_k)
            call_ms[name].append(1000.0 * (time.perf_counter() - t0))
        previous_video, previous = video, clips_k

    sizes = np.array([len(c) for _, c in batches], dtype=np.float64)
    results = {}
    for name, ms in call_ms.items():
        per_clip = np.asarray(ms) / sizes
        results[name] = {"ms_per_call": float(np.median(ms)), "ms_per_clip": float(np.median(per_clip)),
                         "p10_ms_per_clip": float(np.percentile(per_clip, 10)),
                         "p90_ms_per_clip": float(np.percentile(per_clip, 90)),
                         "n_batches": len(ms), "warmup": warmup}
    return results


def timing_settings(runners: dict, batch: int, warmup: int, n_batches: int) -> dict:
    """How the timing ran, to print under each speed table: a ratio means little without it."""
    threads = {}
    for name, runner in runners.items():
        described = runner.describe()
        threads[name] = {k: described[k] for k in ("threads", "scan_threads") if described.get(k) is not None}
    settings = {"batch": batch, "warmup": warmup, "n_batches": n_batches, "interleaved": True, "rewarm": True,
                "threads": threads}
    if "torch" in sys.modules:                 # never import torch just to report its threads
        settings["torch_threads"] = sys.modules["torch"].get_num_threads()
    return settings


def describe_settings(settings: dict, batch: str | None = None) -> str:
    """``timing_settings`` in one line, e.g. for a table's caption; ``batch`` replaces the batch size
    in the text (a table whose rows were timed at different batch sizes)."""
    parts = []
    for name, t in settings["threads"].items():
        if "threads" in t or "scan_threads" in t:
            scan = f" (scan {t['scan_threads']})" if "scan_threads" in t else ""
            parts.append(f"{name} {t.get('threads', 'default')}{scan}")
    if "torch_threads" in settings:
        parts.append(f"torch {settings['torch_threads']}")
    rewarm = ", each timed call right after an untimed one of the same runner" if settings.get("rewarm") else ""
    batch = batch or f"{settings['batch']} clips"
    return (f"median of {settings['n_batches']} interleaved batches of {batch} after "
            f"{settings['warmup']} warm-ups{rewarm}; threads: {', '.join(parts) or 'not reported'}")
