"""Verbs that check a deployed model: ``validate`` (candidate vs PyTorch on labelled data),
``bench`` (a video through any runner, with alerts) and ``bench-server`` (camera streams against
a running Triton server; ``bench --server URL`` is kept as its alias)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from .common import console, needs_torch, out, progress, set_torch_threads, threshold_arg, write_json
from .tables import print_bench_summary


def _bench_progress(prog):
    task = prog.add_task("bench", total=None, info="")

    def cb(done, total):
        prog.update(task, completed=done, total=total, info=f"{done} frames")
    return cb


def _server_bench(videos, server, streams, duration, threshold, json_out):
    """The serving client's stream load test, printed and written as JSON."""
    if streams < 1:
        raise UserError(f"--streams must be >= 1, got {streams}")
    try:
        from ..serving.client import bench_streams
    except ImportError as e:
        raise UserError(f"server mode needs the serve extra ({e}); pip install 'm2s2l-deploy[serve]'") from None
    thr = threshold if isinstance(threshold, float) else None
    result = bench_streams([Path(v) for v in videos], server, streams, duration, thr, console.print)
    out.print_json(json.dumps(result, default=str))
    write_json(json_out, result)
    return result


def bench_server(videos: List[Path] = typer.Argument(..., metavar="VIDEO...", help="Video files, one per camera stream (reused round-robin)."),
                 server: str = typer.Option(..., "--server", help="URL of a running `serve` endpoint (grpc://HOST:PORT or http://HOST:PORT)."),
                 streams: int = typer.Option(1, help="Concurrent video streams."),
                 duration: Optional[float] = typer.Option(None, help="Seconds to run (default: each video once)."),
                 threshold: str = typer.Option("auto", help="Alert threshold: auto (the server's calibrated one), a number, or none."),
                 json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON.")):
    """Load-test a running Triton server with N concurrent camera streams: throughput, latency, alerts.

    Per-stream scores and alerts, p50/p99 latency, failed requests; a server restart is ridden out
    (the gap is reported and the streams resume). The server runs its own model: no local runner.
    """
    _server_bench(videos, server, streams, duration, threshold_arg(threshold), json_out)


def bench(videos: List[str] = typer.Argument(..., metavar="SOURCE...", help="A video file, a folder of frames (give --fps), an http(s)/rtsp URL or camera:N (give --max-frames); several only with --server (video files)."),
          fps: Optional[float] = typer.Option(None, "--fps", help="Frame rate of a folder of frames (a folder has none; default: the model's)."),
          checkpoint: Optional[Path] = typer.Option(None, help="Run folder from `train` (PyTorch runner; with --onnx/--engine: checked against them)."),
          onnx: Optional[Path] = typer.Option(None, "--onnx", help="Exported ONNX (ONNX Runtime); a --split export's NAME.onnx runs as the streaming runner."),
          engine: Optional[Path] = typer.Option(None, "--engine", help="TensorRT engine plan (needs a GPU and TensorRT)."),
          backend: Optional[str] = typer.Option(None, help="torch|onnxruntime|tensorrt (default: implied by the files given)."),
          device: str = typer.Option("cpu", help="cpu|cuda."),
          threads: Optional[int] = typer.Option(None, help="CPU threads for torch / ONNX Runtime (default: their choice)."),
          dtype: str = typer.Option("fp32", help="PyTorch runner on cuda: fp32|fp16|bf16 (autocast; the scan state stays fp32)."),
          cuda_graph: bool = typer.Option(False, "--cuda-graph", help="PyTorch runner on cuda: replay a captured CUDA graph per batch shape."),
          compile: bool = typer.Option(False, "--compile", help="PyTorch runner on cuda: torch.compile the forward (about a minute per batch shape; combine with --cuda-graph)."),
          batch: int = typer.Option(1, help="Clips per inference call: 1 = live latency; larger trades latency for throughput."),
          max_frames: Optional[int] = typer.Option(None, help="Decode at most this many frames of the source (required for a stream or camera)."),
          threshold: str = typer.Option("auto", help="Alert threshold: auto (calibrated on normal footage, stored with the model), a number, or none."),
          min_frames: int = typer.Option(3, help="Alert: raise after this many consecutive frames above the threshold."),
          merge_gap: int = typer.Option(5, help="Alert: an event survives gaps of up to this many frames below the threshold."),
          warmup: int = typer.Option(3, help="Warm-up inference calls before timing."),
          json_out: Optional[Path] = typer.Option(None, "--json", help="Write the summary (fps_model, fps_e2e, latency_ms, n_frames, alerts, ...) as JSON."),
          scores_csv: Optional[Path] = typer.Option(None, "--scores-csv", help="Per-frame scores: frame, source_frame, time_s, score, decidable, in_alert."),
          plot: Optional[Path] = typer.Option(None, "--plot", help="Score plot PNG (threshold, alerts, flagged frames)."),
          annotate: Optional[Path] = typer.Option(None, "--annotate", help="Annotated video (.mp4 or .avi) with score and live alert state."),
          allow_truncated: bool = typer.Option(False, "--allow-truncated", help="Score the decodable part of a truncated/damaged video instead of failing."),
          server: Optional[str] = typer.Option(None, "--server", help="Alias of `bench-server VIDEO... --server URL`: load-test a running `serve` endpoint instead of a local runner."),
          streams: int = typer.Option(1, help="--server: concurrent video streams."),
          duration: Optional[float] = typer.Option(None, help="--server: seconds to run (default: each video once).")):
    """Score a video (or a folder of frames, a stream, a camera) frame by frame as a live system would:
    causal scores, alerts, latency, FPS.

    Decoding runs on a background thread; the video is resampled to the model's training frame rate;
    frames before the first full clip take the first decidable score and are flagged.
    """
    thr = threshold_arg(threshold)
    if server is not None:
        local_only = [name for name, v in (("--checkpoint", checkpoint), ("--onnx", onnx), ("--engine", engine),
                                           ("--scores-csv", scores_csv), ("--plot", plot), ("--annotate", annotate))
                      if v is not None]
        if local_only:       # the alias keeps refusing what `bench-server` has no option for
            raise UserError(f"{', '.join(local_only)} cannot be used with --server (the server runs its own model)")
        _server_bench(videos, server, streams, duration, thr, json_out)
        return
    if len(videos) != 1:
        raise UserError(f"bench takes one video without --server ({len(videos)} given)")
    from ..jobs.bench import BenchOutputs, run_bench
    from ..runners.factory import RunnerSpec, infer_backend

    if infer_backend(checkpoint, onnx, engine, backend) == "torch":
        needs_torch("bench --checkpoint (the PyTorch runner)")
        set_torch_threads(threads)
    spec = RunnerSpec(checkpoint=checkpoint, onnx=onnx, engine=engine, backend=backend, device=device, threads=threads,
                      dtype=dtype, cuda_graph=cuda_graph, compile=compile)
    with progress() as prog:
        summary = run_bench(videos[0], spec, BenchOutputs(json_out, scores_csv, plot, annotate),
                            progress=_bench_progress(prog), log=console.print, batch=batch, max_frames=max_frames,
                            threshold=thr, min_frames=min_frames, merge_gap=merge_gap, warmup=warmup,
                            allow_truncated=allow_truncated, fps=fps)
    print_bench_summary(summary)
    for key, path in summary.get("outputs", {}).items():
        console.print(f"wrote {path}")


def validate(checkpoint: Path = typer.Option(..., help="Run folder from `train`: the PyTorch reference."),
             onnx: Optional[Path] = typer.Option(None, "--onnx", help="Candidate ONNX (fp32, fp16 or Q/DQ int8; a --split NAME.onnx streams)."),
             engine: Optional[Path] = typer.Option(None, "--engine", help="Candidate TensorRT engine plan."),
             data: Path = typer.Option(..., help="Labelled dataset root (its test videos are used)."),
             dataset: str = typer.Option("auto", help="auto|ped2|avenue|shanghaitech|frames"),
             precision: Optional[str] = typer.Option(None, help="fp32|fp16|int8 (default: from the candidate's metadata/sidecar or graph); picks the gate limits."),
             auc_tol: Optional[float] = typer.Option(None, help="Override the ΔAUC limit (default 0.005 fp32/fp16, 0.01 int8)."),
             batch: int = typer.Option(16, help="Clips per inference call (both runners; also the timing batch)."),
             timing_batches: int = typer.Option(20, "--timing-batches", help="Speed: batches timed per runner, both runners interleaved on the same clips (median reported); 0 skips timing."),
             warmup: int = typer.Option(3, help="Speed: untimed warm-up calls per runner before timing."),
             max_videos: Optional[int] = typer.Option(None, help="Use only the first N labelled test videos."),
             device: str = typer.Option("cpu", help="cpu|cuda for both runners (engines always run on cuda)."),
             threads: Optional[int] = typer.Option(None, help="CPU threads for torch / ONNX Runtime."),
             json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON."),
             markdown: Optional[Path] = typer.Option(None, "--markdown", help="Write the report as a Markdown table.")):
    """Prove a deployed model matches PyTorch: ΔAUC, score correlation, output error, speed-up.

    Speed is timed after the accuracy runs: both runners on the same batches of test clips,
    interleaved, after warm-up calls; the median ms per clip is reported.

    Exit 0 only when every gate holds (limits by precision: ΔAUC 0.005 fp32/fp16, 0.01 int8;
    correlation >= 0.999 fp32, 0.99 fp16, 0.97 int8; frame-score p99 relative error 1e-3 fp32,
    0.02 fp16, 0.25 int8); exit 1 when a gate fails, 2 on a usage error.
    """
    needs_torch("validate (its reference is the PyTorch model)")
    set_torch_threads(threads)
    from ..jobs.validate import run_validate

    with progress() as prog:
        def factory(label, total):
            task = prog.add_task(label, total=total, info="")
            return lambda n: prog.advance(task, n)
        report = run_validate(checkpoint, onnx=onnx, engine=engine, data=data, dataset=dataset, precision=precision,
                              auc_tol=auc_tol, batch=batch, max_videos=max_videos, device=device, threads=threads,
                              json_out=json_out, markdown_out=markdown, timing_batches=timing_batches, warmup=warmup,
                              progress_factory=factory, log=console.print)
    out.print(report["markdown"], markup=False, highlight=False, soft_wrap=True)
    for p in (markdown, json_out):
        if p is not None:
            console.print(f"wrote {p}")
    if not report["passed"]:
        failed = ", ".join(f"{g['name']} {g['value']:.4g} (limit {g['comparison']} {g['limit']:g})"
                           if g["value"] is not None else f"{g['name']} n/a" for g in report["gates"] if not g["passed"])
        console.print(f"[red]validation FAILED:[/red] {failed}", highlight=False, soft_wrap=True)
        sys.exit(1)     # not typer.Exit: main() runs the app with standalone_mode=False, which drops its code
