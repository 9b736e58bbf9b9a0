"""Rich tables the verbs print: results first, each with how it was measured where that matters."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from ..runners.timing import describe_settings
from .common import fmt, out


def report_table(report: dict, title: str) -> Table:
    t = Table(title=title)
    for col in ("protocol", "micro AUC", "macro AUC"):
        t.add_column(col)
    t.add_row("paper (per-video min-max)", fmt(report["auc_micro"]), fmt(report["auc_macro"]))
    t.add_row("causal (normal-footage stats)", fmt(report["auc_micro_causal"]), fmt(report["auc_macro_causal"]))
    if "smoothed" in report:
        s = report["smoothed"]
        t.add_row(f"paper, Gaussian sigma={s['sigma']:g}", fmt(s["auc_micro"]), fmt(s["auc_macro"]))
    t.add_row("frame-difference baseline", fmt(report["baseline_auc_micro"]), fmt(report["baseline_auc_macro"]))
    if report.get("auc_pixel") is not None:
        t.add_row("pixel level", fmt(report["auc_pixel"]), "")
    return t


def ablation_table(report: dict) -> Table | None:
    if "ablation" not in report:
        return None
    t = Table(title="score ablation (paper protocol)")
    for col in ("score", "micro AUC", "macro AUC"):
        t.add_column(col)
    for name, r in report["ablation"].items():
        t.add_row(name, fmt(r["auc_micro"]), fmt(r["auc_macro"]))
    return t


def info_table(preset: str, r: dict) -> Table:
    t = Table(title=f"M2S2L preset '{preset}'")
    t.add_column("quantity")
    t.add_column("value")
    i = r["input"]
    t.add_row("input clip", f"{i['clip_len']} x {i['channels']} x {i['height']} x {i['width']}")
    t.add_row("parameters", f"{r['parameters']:,}")
    t.add_row("GFLOPs per clip", f"{r['gflops_per_clip']:.3f}")
    t.add_row("  dense (FlopCounterMode)", f"{r['gflops_dense']:.3f}")
    t.add_row("  selective scans (formula)", f"{r['gflops_scan']:.3f}")
    t.add_row("scan calls / longest", f"{r['scan_calls']} / {r['longest_scan']} steps")
    t.add_row("scan form counted", r["scan_form_counted"])
    return t


def _speed_cell(r: dict) -> str:
    """PyTorch → candidate ms/clip of one report: each report timed its own pair, so each has its own PyTorch."""
    if r.get("timing") is None or r.get("speedup") is None:
        return "not timed"
    return f"{r['reference']['ms_per_clip']:.1f}→{r['candidate']['ms_per_clip']:.1f} {r['speedup']:.2f}x"


def _timing_caption(reports: dict) -> str | None:
    """How speed was timed, once for every row (the rows differ only in batch size, shown per row)."""
    timed = [r for r in reports.values() if r.get("timing")]
    if not timed:
        return None
    per_row = len({r["timing"]["settings"]["batch"] for r in timed}) > 1
    line = describe_settings(timed[0]["timing"]["settings"], "the row's size" if per_row else None)
    runners = sorted({r["candidate"]["runner"] for r in reports.values()})
    return f"candidate: {', '.join(runners)}; ms/clip: {line}"


def validate_table(reports: dict) -> Table:
    """The demo's candidates side by side against the PyTorch reference; how speed was timed below."""
    caption = _timing_caption(reports)
    t = Table(title="validate vs PyTorch (CPU, micro AUC paper protocol)", caption=escape(caption) if caption else None,
              padding=(0, 1), collapse_padding=True)   # fits 80 columns (logs, CI)
    for col in ("ONNX Runtime", "AUC", "ΔAUC", "corr", "p99 err", "ms/clip torch→ORT", "gate"):
        t.add_column(col, no_wrap=True)
    r0 = next(iter(reports.values()))["reference"]
    t.add_row("(PyTorch fp32)", fmt(r0["auc_micro"]), "ref", "", "", "", "")
    for name, r in reports.items():
        t.add_row(name, fmt(r["candidate"]["auc_micro"]), f"{r['delta_auc']['auc_micro']:+.4f}",
                  fmt(_min_correlation(r["correlation"])),
                  f"{r['output_error']['frame_score']['p99_rel']:.2g}", _speed_cell(r),
                  "[green]pass[/green]" if r["passed"] else "[red]FAIL[/red]")
    return t


def _min_correlation(c: dict) -> float | None:
    """The lower of Pearson and Spearman; None where validate found them undefined (a constant or
    non-finite score: the gate fails and the table says n/a instead of raising)."""
    return None if c["pearson"] is None else min(c["pearson"], c["spearman"])


def _settings_table(s: dict) -> Table:
    t = Table(title="bench settings")
    t.add_column("setting")
    t.add_column("value")
    vi = s["video_info"]
    t.add_row("video", f"{s['video']} ({vi['width']}x{vi['height']}, {vi['fps']:g} fps, {vi['frames_decoded']} frames decoded)")
    t.add_row("runner", s["runner"])
    m = s.get("machine", {})
    t.add_row("machine", f"{m.get('cpu', '?')}, {m.get('cpu_count', '?')} cores" + (f", {m['gpu']}" if m.get("gpu") else ""))
    rate = f"{s['scores_fps']:g} fps" if s.get("scores_fps") else "source rate"
    t.add_row("frame rate", f"resampled to {rate} (model's training rate)" if s["resampled"] else rate)
    t.add_row("batch / warm-up calls", f"{s['batch']} / {s['warmup_calls']}")
    thr = "none (no alerts)" if s["threshold"] is None else f"{s['threshold']:.3f} ({s['threshold_source']})"
    t.add_row("threshold", thr)
    r = s["alert_rules"]
    t.add_row("alert rules", f"raise after {r['min_frames']} frames above, merge gaps <= {r['merge_gap']} frames")
    return t


def _results_table(s: dict) -> Table:
    t = Table(title="bench results")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("frames scored", f"{s['n_frames']} ({s['n_flagged_frames']} before the first full clip, flagged)")
    lat = s["latency_ms"]
    t.add_row("latency per clip p50 / p90 / p99", f"{lat['p50']:.1f} / {lat['p90']:.1f} / {lat['p99']:.1f} ms")
    t.add_row("FPS model only", f"{s['fps_model']:.1f}")
    t.add_row("FPS end to end (decode included)", f"{s['fps_e2e']:.1f}")
    tm = s["timing"]
    t.add_row("wall / model / decode / contract", f"{tm['wall_s']:.2f} / {tm['model_s']:.2f} / {tm['decode_s']:.2f} / {tm['preprocess_s']:.2f} s")
    sc = s["score"]
    t.add_row("score min / mean / max", f"{sc['min']:.2f} / {sc['mean']:.2f} / {sc['max']:.2f}")
    t.add_row("alert events", str(len(s["alerts"])))
    return t


def _alerts_table(s: dict) -> Table | None:
    if not s["alerts"]:
        return None
    t = Table(title="alerts")
    for col in ("#", "start", "end", "peak frame", "peak score", "raised at"):
        t.add_column(col, justify="right")
    for i, a in enumerate(s["alerts"], 1):
        def at(key):
            return f"{a[key + '_frame']}" + (f" ({a[key + '_s']:.1f} s)" if key + "_s" in a else "")
        t.add_row(str(i), at("start"), at("end"), at("peak"), f"{a['peak_score']:.2f}", at("raised"))
    return t


def print_bench_summary(s: dict) -> None:
    """Settings table (how it was measured) above results and alerts."""
    out.print(_settings_table(s))
    out.print(_results_table(s))
    if (t := _alerts_table(s)) is not None:
        out.print(t)


def engine_summary(result) -> dict:
    side = result.summary
    return {"plan": str(result.plan), "sidecar": str(result.sidecar), "precision": result.precision,
            "backend": side["backend"], "device": side["device"], "targets": side["targets"],
            "profile": side["profile"], "build_seconds": round(result.build_seconds, 2),
            "precision_onnx": str(result.precision_onnx) if result.precision_onnx else None,
            "layers": side["network"]["layers"], "plugin_layers": len(side["network"]["plugin_layers"]),
            "half_layers": side["network"]["half_layers"], "int8_layers": side["network"]["int8_layers"],
            "onnx_sha256": side["onnx"]["sha256"], "calibration": side.get("calibration")}


def engine_table(s: dict) -> Table:
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


def watch_table(rows: list[dict], title: str = "watch") -> Table:
    """One row per source (its health, or its summary at the end): frames, latency, queue, score, alerts, gaps."""
    def count(v):
        return len(v) if isinstance(v, list) else v

    t = Table(title=title)
    for col in ("source", "state", "in", "scored", "dropped", "latency ms p50/p99", "queue", "score / thr",
                "alerts", "gaps"):
        t.add_column(col, justify="left" if col in ("source", "state") else "right")
    for r in rows:
        lat = r["latency_ms"]
        thr = "none" if r["threshold"] is None else f"{r['threshold']:.2f}"
        alerts = f"{count(r['alerts'])}" + (" [red]+1 open[/red]" if r["alert_open"] else "")
        t.add_row(escape(r["source"]), r["state"], str(r["frames_in"]), str(r["scored"]), str(r["dropped"]),
                  f"{fmt(lat['p50'], 0)}/{fmt(lat['p99'], 0)}", f"{r['queue']} (max {r['queue_max']})",
                  f"{fmt(r['last_score'], 2)} / {thr}", alerts, str(count(r["gaps"])))
    return t
