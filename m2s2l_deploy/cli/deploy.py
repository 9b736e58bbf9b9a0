"""`build-engine`: TensorRT / TensorRT-RTX engines from an exported ONNX (issue #4).

Commands register on the shared Typer ``app`` of ``cli.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .cli import app, console, out
from .errors import UserError


def _parse_ccs(text: str | None) -> list[str] | None:
    if not text:
        return None
    ccs = [c.strip() for c in text.split(",") if c.strip()]
    for c in ccs:
        parts = c.split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise UserError(f"--compute-capability takes values like 8.6 or 8.6,8.9,12.0; got '{c}'")
    return ccs


def _summary(result) -> dict:
    side = result.summary
    return {"plan": str(result.plan), "sidecar": str(result.sidecar), "precision": result.precision,
            "backend": side["backend"], "device": side["device"], "targets": side["targets"],
            "profile": side["profile"], "build_seconds": round(result.build_seconds, 2),
            "precision_onnx": str(result.precision_onnx) if result.precision_onnx else None,
            "layers": side["network"]["layers"], "plugin_layers": len(side["network"]["plugin_layers"]),
            "half_layers": side["network"]["half_layers"], "int8_layers": side["network"]["int8_layers"],
            "onnx_sha256": side["onnx"]["sha256"], "calibration": side.get("calibration")}


def _table(s: dict) -> Table:
    t = Table(title=f"engine {Path(s['plan']).name}")
    t.add_column("field")
    t.add_column("value")
    t.add_row("backend", f"{s['backend']['name']} {s['backend']['version']}")
    t.add_row("precision", s["precision"] + (f" (ONNX: {s['precision_onnx']})" if s["precision_onnx"] else ""))
    t.add_row("built on", s["device"])
    t.add_row("runs on compute capability", ", ".join(s["targets"]))
    for name, p in s["profile"].items():
        t.add_row(f"profile '{name}'", f"min {p['min']}  opt {p['opt']}  max {p['max']}")
    t.add_row("layers", f"{s['layers']} ({s['plugin_layers']} SelectiveScan plugin, {s['half_layers']} FP16, "
                        f"{s['int8_layers']} INT8)")
    t.add_row("build time", f"{s['build_seconds']:.1f} s")
    t.add_row("sidecar", s["sidecar"])
    return t


@app.command("build-engine")
def build_engine_cmd(
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
    from .engine.build import build_engine

    if fp16 and int8:
        raise UserError("give --fp16 or --int8, not both")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    kwargs = dict(calib_clips=calib_clips, calib_method=calib_method, calib_dir=calib_dir, min_batch=min_batch,
                  opt_batch=opt_batch, max_batch=max_batch, timing_cache=timing_cache,
                  compute_capabilities=_parse_ccs(compute_capability), threads=threads)
    if console.is_terminal:
        with console.status("building engine") as status:
            result = build_engine(onnx, output, precision=precision, calib_data=calib_data,
                                  backend=None if backend == "auto" else backend,
                                  log=lambda msg: (status.update(msg), console.print(msg)), **kwargs)
    else:
        result = build_engine(onnx, output, precision=precision, calib_data=calib_data,
                              backend=None if backend == "auto" else backend, log=console.print, **kwargs)
    summary = _summary(result)
    if json_out:
        out.print_json(json.dumps(summary))
    else:
        out.print(_table(summary))
