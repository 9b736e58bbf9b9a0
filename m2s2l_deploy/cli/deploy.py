"""Verbs that turn a checkpoint into deployable files: ``export`` (ONNX) and ``build-engine``
(TensorRT / TensorRT-RTX plan + sidecar)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from ..errors import UserError, require
from .common import console, needs_torch, out
from .tables import engine_summary, engine_table


def _parse_ccs(text: str | None) -> list[str] | None:
    if not text:
        return None
    ccs = [c.strip() for c in text.split(",") if c.strip()]
    for c in ccs:
        parts = c.split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise UserError(f"--compute-capability takes values like 8.6 or 8.6,8.9,12.0; got '{c}'")
    return ccs


def export(checkpoint: Path = typer.Option(..., help="Run folder from `train`."),
           scan: str = typer.Option("loop", help="loop (ONNX Loop recurrence: portable, the default) | chunked (log-depth, bounded memory) | plugin (SelectiveScan custom node + function body: the CPU pick, ONNX Runtime runs each scan as one compiled Numba op when numba and onnxruntime-extensions are installed; TensorRT takes it with the plugin)."),
           output: Optional[Path] = typer.Option(None, help="Output file (default export/m2s2l-PRESET-SCAN.onnx); with --split NAME.encoder.onnx + NAME.head.onnx."),
           opset: int = typer.Option(17, help="ONNX opset (>= 17)."),
           batch: str = typer.Option("dynamic", help="dynamic, or a fixed batch size N."),
           split: bool = typer.Option(False, "--split", help="Per-frame encoder + clip head (streams encode each frame once)."),
           chunk: int = typer.Option(256, help="--scan chunked: time steps per chunk (bounds memory; see export/README.md).")):
    """Export a checkpoint to ONNX (checked, with the input contract in its metadata)."""
    needs_torch("export")
    require("onnx", "`export`", "onnx")
    from ..export.exporter import export_onnx, parse_batch

    result = export_onnx(checkpoint, output, scan=scan, opset=opset, batch=parse_batch(batch), split=split, chunk=chunk)
    for path in result.paths:
        out.print(f"wrote {path} ({result.nodes[path.name]} nodes, scan '{result.scan_form}')")


def build_engine(
        onnx: Path = typer.Option(..., "--onnx", help="ONNX file from `m2s2l-deploy export` (any --scan form)."),
        fp16: bool = typer.Option(False, "--fp16", help="FP16 mixed precision: scans, exp/softplus/log, norms and the score head stay FP32 (onnxconverter-common)."),
        int8: bool = typer.Option(False, "--int8", help="Explicit Q/DQ INT8 (onnxruntime.quantization, per-channel symmetric weights, no Q/DQ in scans)."),
        calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="--int8: dataset root whose TRAINING videos give the calibration clips (default: newest matching set cached in --calib-dir)."),
        calib_clips: int = typer.Option(64, "--calib-clips", help="--int8: number of calibration clips, evenly spaced over all training clips."),
        calib_method: str = typer.Option("minmax", "--calib-method", help="--int8: minmax | entropy | percentile (99.999%)."),
        calib_dir: Path = typer.Option(Path("calibration"), "--calib-dir", help="Where calibration clips are cached."),
        backend: str = typer.Option("auto", help="auto (tensorrt if importable, else tensorrt-rtx) | tensorrt | tensorrt-rtx."),
        output: Optional[Path] = typer.Option(None, help="Plan file (default engines/<onnx name>-<precision>.plan); the sidecar is <plan>.json."),
        min_batch: int = typer.Option(1, "--min-batch", help="Optimisation profile: smallest batch."),
        opt_batch: int = typer.Option(4, "--opt-batch", help="Optimisation profile: batch to tune for."),
        max_batch: int = typer.Option(16, "--max-batch", help="Optimisation profile: largest batch."),
        timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache file: read if present, written after the build."),
        compute_capability: Optional[str] = typer.Option(None, "--compute-capability", help="TensorRT-RTX: target GPUs, e.g. 8.6 or 8.6,8.9,12.0 (default: its portable set 8.0/8.6/8.9/12.x)."),
        threads: int = typer.Option(1, help="Builder threads (1 keeps a shared CPU usable)."),
        json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout instead of a table.")):
    """Build a strongly typed TensorRT engine plan (+ JSON sidecar) from an exported ONNX.

    Without a GPU, TensorRT-RTX builds ahead of time for its default GPUs; no plan can run on this
    machine. The FP16/INT8 ONNX written next to the plan runs in ONNX Runtime.
    """
    from ..engine.build import build_engine as build

    if fp16 and int8:
        raise UserError("give --fp16 or --int8, not both")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    kwargs = dict(calib_clips=calib_clips, calib_method=calib_method, calib_dir=calib_dir, min_batch=min_batch,
                  opt_batch=opt_batch, max_batch=max_batch, timing_cache=timing_cache,
                  compute_capabilities=_parse_ccs(compute_capability), threads=threads)
    if console.is_terminal:
        with console.status("building engine") as status:
            result = build(onnx, output, precision=precision, calib_data=calib_data,
                                  backend=None if backend == "auto" else backend,
                                  log=lambda msg: (status.update(msg), console.print(msg)), **kwargs)
    else:
        result = build(onnx, output, precision=precision, calib_data=calib_data,
                              backend=None if backend == "auto" else backend, log=console.print, **kwargs)
    summary = engine_summary(result)
    if json_out:
        out.print_json(json.dumps(summary))
    else:
        out.print(engine_table(summary))
