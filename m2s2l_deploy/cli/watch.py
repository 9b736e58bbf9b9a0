"""The ``watch`` verb: live sources scored until Ctrl-C / SIGTERM, alerts as JSON lines as they happen.

Parses the sources and their per-source settings, builds the outputs (events file and/or stdout,
snapshots folder, webhook), hands everything to ``jobs.watch.Watch`` and shows its health in a
Rich live view on a terminal (a health line a minute in logs). Exit 0 when at least one source
opened, 1 when none ever did (each said in one line), 2 on a usage error.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from ..errors import UserError
from .common import console, needs_torch, out, set_torch_threads, threshold_arg, write_json
from .tables import watch_table


def _per_source(values: list[str], n: int, option: str) -> list[str]:
    """One value for every source, or one per source in order."""
    if len(values) in (0, 1):
        return (values or [None]) * n
    if len(values) != n:
        raise UserError(f"{option} takes one value for all sources or one per source ({n}); got {len(values)}")
    return values


def _threshold(text: str | None):
    return "auto" if text is None else threshold_arg(text)


def _roi(text: str | None) -> Path | None:
    if text is None or text.strip().lower() in ("", "none", "off"):
        return None
    path = Path(text)
    if not path.is_file():
        raise UserError(f"region-of-interest mask not found: {path}")
    return path


def _runner_factory(checkpoint, onnx, engine, backend, device, threads, server):
    """``make_runner`` for the job: a local runner per source, or a connection per source to --server."""
    if server is not None:
        given = [n for n, v in (("--checkpoint", checkpoint), ("--onnx", onnx), ("--engine", engine)) if v is not None]
        if given:
            raise UserError(f"{', '.join(given)} cannot be used with --server (the server runs its own model)")
        try:
            from ..serving.client import ServerRunner, describe_server
        except ImportError as e:
            raise UserError(f"--server needs the serve extra ({e}); pip install 'm2s2l-deploy[serve]'") from None
        model = describe_server(server)
        return lambda: ServerRunner(model)
    from ..runners.factory import RunnerSpec, infer_backend

    if infer_backend(checkpoint, onnx, engine, backend) == "torch":
        needs_torch("watch --checkpoint (the PyTorch runner)")
        set_torch_threads(threads)
    return RunnerSpec(checkpoint=checkpoint, onnx=onnx, engine=engine, backend=backend, device=device,
                      threads=threads).make


def _events(targets: list[str], max_mb: float, keep: int):
    from ..files import output_path
    from ..report.events import EventLog

    files = [t for t in targets if t != "-"]
    if len(files) > 1:
        raise UserError("--events takes one file (and/or - for stdout)")
    path = output_path(files[0], "events file", (".jsonl",)) if files else None
    if path is None and "-" not in targets:
        return None
    return EventLog(path, sys.stdout if "-" in targets else None, max_bytes=int(max_mb * (1 << 20)), keep=keep)


def watch(sources: List[str] = typer.Argument(..., metavar="SOURCE...", help="Video files, folders of frames (give --fps), http(s):// or rtsp:// URLs, camera:N."),
          checkpoint: Optional[Path] = typer.Option(None, help="Run folder from `train` (PyTorch runner)."),
          onnx: Optional[Path] = typer.Option(None, "--onnx", help="Exported ONNX (ONNX Runtime; a --split NAME.onnx streams)."),
          engine: Optional[Path] = typer.Option(None, "--engine", help="TensorRT engine plan (needs a GPU and TensorRT)."),
          server: Optional[str] = typer.Option(None, "--server", help="Score through a running `serve` endpoint (grpc://HOST:PORT or http://HOST:PORT) instead of a local runner."),
          backend: Optional[str] = typer.Option(None, help="torch|onnxruntime|tensorrt (default: implied by the files given)."),
          device: str = typer.Option("cpu", help="cpu|cuda."),
          threads: Optional[int] = typer.Option(None, help="CPU threads for torch / ONNX Runtime (per source for ONNX Runtime)."),
          fps: Optional[float] = typer.Option(None, "--fps", help="Frame rate of folders of frames (they have none; default: the model's). Streams go by their timestamps."),
          threshold: List[str] = typer.Option([], "--threshold", help="auto (the model's calibration), a number, or none; once for all sources or once per source, in order."),
          roi: List[str] = typer.Option([], "--roi", help="Region-of-interest mask image (white = watched) or none; once for all sources or once per source."),
          min_frames: int = typer.Option(3, help="Alert: raise after this many consecutive frames above the threshold."),
          merge_gap: int = typer.Option(5, help="Alert: an event survives gaps of up to this many frames below the threshold."),
          events: List[str] = typer.Option([], "--events", help="FILE.jsonl for alert and stream events as JSON lines (appended, flushed, rotated), and/or - for stdout."),
          events_max_mb: float = typer.Option(100.0, "--events-max-mb", help="Rotate the events file beyond this size (FILE.jsonl.1, .2, ...)."),
          events_keep: int = typer.Option(5, "--events-keep", help="Rotated events files to keep."),
          snapshots: Optional[Path] = typer.Option(None, "--snapshots", help="Folder for a JPEG of each alert's peak frame with its score map overlaid."),
          webhook: Optional[str] = typer.Option(None, "--webhook", help="POST each alert start and end as JSON to this URL (background queue, timeouts, retries)."),
          webhook_timeout: float = typer.Option(5.0, "--webhook-timeout", help="Seconds per webhook request."),
          max_retries: int = typer.Option(3, "--max-retries", help="Start-up: tries to open a source beyond the first before it is reported and left out."),
          stall_timeout: float = typer.Option(10.0, "--stall-timeout", help="Seconds without data after which a stream is reopened (a gap)."),
          queue: int = typer.Option(16, "--queue", help="Frames a live source may queue for the scorer; beyond, the queued ones are dropped (counted)."),
          batch: int = typer.Option(1, help="Clips per inference call (1 = lowest latency)."),
          duration: Optional[float] = typer.Option(None, help="Stop after this many seconds (default: run until Ctrl-C / SIGTERM)."),
          json_out: Optional[Path] = typer.Option(None, "--json", help="Write the summary (per-source health, gaps, alerts) as JSON when the run stops.")):
    """Watch live sources until stopped: alerts as they happen, streams reopened after drops and stalls.

    Each source is read on its own thread and scored by its own runner; an alert's start and end
    are written the moment they are known. Ctrl-C or SIGTERM stops cleanly with the summary.
    """
    from ..data.sources import parse_source
    from ..files import output_path
    from ..jobs.watch import SourcePlan, Watch, WatchOptions

    parsed = [parse_source(s, fps) for s in sources]
    thresholds = [_threshold(t) for t in _per_source(threshold, len(parsed), "--threshold")]
    rois = [_roi(r) for r in _per_source(roi, len(parsed), "--roi")]
    if server is not None and any(rois):
        raise UserError("--roi cannot be used with --server (the server returns no score map)")
    json_out = output_path(json_out, "JSON summary", (".json",))
    opts = WatchOptions(batch=batch, min_frames=min_frames, merge_gap=merge_gap, max_retries=max_retries,
                        stall_timeout_s=stall_timeout, queue_frames=queue, duration_s=duration).check()
    hook = None
    if webhook is not None:
        from ..urls import redact
        if not webhook.lower().startswith(("http://", "https://")):
            raise UserError(f"--webhook must be an http(s):// URL, got {redact(webhook)}")
        if not webhook_timeout > 0:
            raise UserError(f"--webhook-timeout must be positive, got {webhook_timeout}")
    make_runner = _runner_factory(checkpoint, onnx, engine, backend, device, threads, server)
    log = _console_log
    sink = _events(events, events_max_mb, events_keep)
    if webhook is not None:
        from ..report.webhook import Webhook
        hook = Webhook(webhook, timeout_s=webhook_timeout, log=log)
    plans = [SourcePlan(s, t, r) for s, t, r in zip(parsed, thresholds, rois)]
    try:
        job = Watch(plans, make_runner, opts, events=sink, snapshots=snapshots, webhook=hook, log=log)
        summary = _run(job)
    finally:
        if sink is not None:
            sink.close()
    results = console if sink is not None and sink.stream is not None else out
    results.print(watch_table(summary["sources"], title="watch summary"))
    write_json(json_out, summary)
    if not summary["opened_any"]:
        sys.exit(1)     # not typer.Exit: main() runs the app with standalone_mode=False, which drops its code


def _console_log(message: str) -> None:
    if message.startswith("error: "):
        console.print("[red]error:[/red] " + escape(message[7:]), highlight=False, soft_wrap=True)
    else:
        console.print(message, markup=False, highlight=False, soft_wrap=True)


def _run(job) -> dict:
    """Run until SIGINT/SIGTERM (or the job ends), with a live health table on a terminal."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if console.is_terminal:
            from rich.live import Live
            with Live(watch_table(job.health()), console=console, refresh_per_second=2, transient=True) as live:
                return job.run(stop, tick=lambda rows: live.update(watch_table(rows)))
        last = [time.monotonic()]

        def every_minute(rows):
            if time.monotonic() - last[0] >= 60:
                last[0] = time.monotonic()
                console.print("health: " + "; ".join(
                    f"{r['source']} {r['state']} in {r['frames_in']} scored {r['scored']} dropped {r['dropped']} "
                    f"p99 {r['latency_ms']['p99']} ms" for r in rows), markup=False, highlight=False, soft_wrap=True)
        return job.run(stop, tick=every_minute)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
