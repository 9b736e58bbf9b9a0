"""The ``m2s2l-deploy`` command line (Typer + Rich).

User mistakes surface as ``UserError`` and print one red line with exit code 2; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="M2S2L video anomaly detection: train, evaluate, export and deploy.")
console = Console(stderr=True)
out = Console()

DATASETS = "auto|ped2|avenue|shanghaitech|frames|videos"


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False, disable=not console.is_terminal)


def _train_progress(prog: Progress, total_steps: int | None, budget_s: float | None):
    """Progress callback for training: a bar on a terminal, a line every 30 s in logs (CI)."""
    by_time = total_steps is None
    task = prog.add_task("train", total=total_steps if not by_time else int(budget_s), info="")
    last = [0.0]

    def cb(step, elapsed, loss):
        prog.update(task, completed=int(elapsed) if by_time else step, info=f"step {step} loss {loss:.4f}")
        if not console.is_terminal and elapsed - last[0] >= 30:
            last[0] = elapsed
            console.print(f"train: step {step}, {elapsed:.0f} s, loss {loss:.4f}")
    return cb


def _parse_size(size: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", size)
    if not m:
        raise UserError(f"--size must look like HxW (e.g. 120x160), got '{size}'")
    h, w = int(m.group(1)), int(m.group(2))
    if not (32 <= h <= 2048 and 32 <= w <= 2048):
        raise UserError("--size must be between 32 and 2048 pixels per side")
    return h, w


def _write_json(path: Path | None, data: dict) -> None:
    if path is None:
        return
    from .model.checkpoint import atomic_write_json
    try:
        atomic_write_json(Path(path), data)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    console.print(f"wrote {path}")


def _fmt(x, digits=4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


# -- synth ----------------------------------------------------------------------------------------
@app.command()
def synth(out_dir: Path = typer.Argument(..., metavar="OUT", help="Folder to create (must not exist or be empty)."),
          seed: int = typer.Option(0, help="Pedestrians, timing and anomalies; the scene layout stays fixed."),
          size: str = typer.Option("120x160", help="Frame size HxW."),
          n_train: int = typer.Option(8, "--train", help="Training videos (normal only)."),
          n_test: int = typer.Option(7, "--test", help="Test videos: each event type once, two clean, then round again."),
          scene: int = typer.Option(0, help="Scene layout (background, walkway); keep it fixed between train and test sets."),
          events: str = typer.Option("", help="Comma-separated event types of the test videos, from: cyclist, cart, "
                                     "static_object, unusual_object, running, wrong_way (default: all but wrong_way).")):
    """Write a synthetic Ped2-like surveillance scene in the generic `frames` layout."""
    from .data.synth import DEFAULT_EVENTS, generate_scene

    h, w = _parse_size(size)
    if n_train < 1 or n_test < 0:
        raise UserError("--train must be >= 1 and --test >= 0")
    with _progress() as prog:
        task = prog.add_task("synth", total=None, info="")

        def cb(done, total):
            prog.update(task, completed=done, total=total)
        meta = generate_scene(out_dir, seed=seed, size=(h, w), n_train=n_train, n_test=n_test, scene=scene, progress=cb,
                              events=tuple(e.strip() for e in events.split(",") if e.strip()) or DEFAULT_EVENTS)
    n_events = sum(len(v.get("events", [])) for v in meta["videos"].values())
    out.print(f"wrote {out_dir}: {n_train} training + {n_test} test videos, {n_events} anomaly events, {h}x{w} @ {meta['fps']} fps")


# -- train ----------------------------------------------------------------------------------------
@app.command()
def train(data: Path = typer.Option(..., help="Dataset root (see --dataset)."),
          dataset: str = typer.Option("auto", help=DATASETS),
          preset: str = typer.Option("tiny", help="tiny|small|paper"),
          epochs: Optional[int] = typer.Option(None, help="Passes over all training clips."),
          minutes: Optional[float] = typer.Option(None, help="Wall-clock training budget (alternative to --epochs)."),
          steps: Optional[int] = typer.Option(None, help="Optimiser steps (alternative to --epochs/--minutes; "
                                              "the same steps and seed give the same weights on one machine)."),
          out_dir: Path = typer.Option(..., "--out", help="Run folder: model.safetensors + config.json."),
          batch: int = typer.Option(8, help="Clips per step."),
          lr: float = typer.Option(2e-3, help="Peak learning rate (cosine schedule)."),
          seed: int = typer.Option(0),
          channels: str = typer.Option("auto", help="auto|1|3: grayscale or RGB model input."),
          resize: str = typer.Option("stretch", help="stretch|letterbox to the preset's size."),
          resume: bool = typer.Option(False, help="Continue the run in --out (weights and optimiser state)."),
          threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
          device: str = typer.Option("cpu", help="cpu (scans by the Numba form when Numba is installed) | cuda | cuda:N."),
          json_out: Optional[Path] = typer.Option(None, "--json", help="Write the training summary as JSON.")):
    """Train M2S2L on normal footage; the last training video calibrates the score."""
    from .train import TrainOptions, train as run_train

    if channels not in ("auto", "1", "3"):
        raise UserError("--channels must be auto, 1 or 3")
    if batch < 1:
        raise UserError("--batch must be >= 1")
    if sum(x is not None for x in (epochs, minutes, steps)) > 1:
        raise UserError("give one of --epochs, --minutes, --steps")
    opts = TrainOptions(preset=preset, epochs=epochs, minutes=minutes, steps=steps, batch=batch, lr=lr, seed=seed,
                        channels=channels, resize=resize, resume=resume, threads=threads, device=device)
    with _progress() as prog:
        def factory(total_steps, budget_s):
            return _train_progress(prog, total_steps, budget_s)
        summary = run_train(data, out_dir, layout=dataset, opts=opts, log=console.print, progress_factory=factory)
    out.print(f"trained {summary['preset']} for {summary['steps']} steps ({summary['train_seconds']:.0f} s), "
              f"final loss {_fmt(summary['final_loss'])}; checkpoint in {out_dir}")
    _write_json(json_out, summary)


# -- evaluate -------------------------------------------------------------------------------------
def _report_table(report: dict, title: str) -> Table:
    t = Table(title=title)
    for col in ("protocol", "micro AUC", "macro AUC"):
        t.add_column(col)
    t.add_row("paper (per-video min-max)", _fmt(report["auc_micro"]), _fmt(report["auc_macro"]))
    t.add_row("causal (normal-footage stats)", _fmt(report["auc_micro_causal"]), _fmt(report["auc_macro_causal"]))
    if "smoothed" in report:
        s = report["smoothed"]
        t.add_row(f"paper, Gaussian sigma={s['sigma']:g}", _fmt(s["auc_micro"]), _fmt(s["auc_macro"]))
    t.add_row("frame-difference baseline", _fmt(report["baseline_auc_micro"]), _fmt(report["baseline_auc_macro"]))
    if report.get("auc_pixel") is not None:
        t.add_row("pixel level", _fmt(report["auc_pixel"]), "")
    return t


def _ablation_table(report: dict) -> Table | None:
    if "ablation" not in report:
        return None
    t = Table(title="score ablation (paper protocol)")
    for col in ("score", "micro AUC", "macro AUC"):
        t.add_column(col)
    for name, r in report["ablation"].items():
        t.add_row(name, _fmt(r["auc_micro"]), _fmt(r["auc_macro"]))
    return t


def run_evaluate(checkpoint: Path, data: Path, dataset: str, batch: int, smooth: float,
                 plots: Path | None, runner=None, device: str = "cpu") -> dict:
    from .evaluate import evaluate as run_eval
    from .runners import TorchRunner

    runner = runner if runner is not None else TorchRunner(checkpoint, device=device, extras=True)
    with _progress() as prog:
        def factory(total):
            task = prog.add_task("evaluate", total=total, info="")
            return lambda n: prog.advance(task, n)
        report = run_eval(runner, data, layout=dataset, batch=batch, smooth_sigma=smooth, plots_dir=plots,
                          progress_factory=factory, log=console.print)
    report["checkpoint"] = str(checkpoint)
    return report


@app.command()
def evaluate(checkpoint: Path = typer.Option(..., help="Run folder from `train`."),
             data: Path = typer.Option(..., help="Labelled dataset root."),
             dataset: str = typer.Option("auto", help=DATASETS),
             backend: str = typer.Option("torch", help="torch (the PyTorch model) | onnxruntime (needs --onnx)."),
             device: str = typer.Option("cpu", help="--backend torch: cpu | cuda | cuda:N."),
             onnx: Optional[Path] = typer.Option(None, "--onnx", help="Exported ONNX file (or a --split pair's NAME.onnx) for --backend onnxruntime."),
             batch: int = typer.Option(16, help="Clips per inference call."),
             smooth: float = typer.Option(3.0, help="Also report AUC after temporal Gaussian smoothing with this sigma (frames); 0 = off."),
             plots: Optional[Path] = typer.Option(None, help="Folder for one score-curve PNG per test video."),
             json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON.")):
    """Frame-level AUC (micro/macro), paper and causal protocols, baseline, pixel AUC, ablation."""
    if backend != "torch" and device != "cpu":
        raise UserError("--device applies to --backend torch (onnxruntime runs on the CPU here)")
    report = run_evaluate(checkpoint, data, dataset, batch, smooth, plots,
                          runner=_onnx_runner(backend, onnx, checkpoint), device=device)
    out.print(_report_table(report, f"{report['n_frames']} frames, {report['n_videos']} videos"))
    if (t := _ablation_table(report)) is not None:
        out.print(t)
    _write_json(json_out, report)


# -- export (ONNX) -------------------------------------------------------------------------------
def _onnx_runner(backend: str, onnx_file: Path | None, checkpoint: Path):
    """None for --backend torch; an OnnxRunner (checked against the checkpoint) for onnxruntime."""
    if backend == "torch":
        if onnx_file is not None:
            raise UserError("--onnx needs --backend onnxruntime")
        return None
    if backend != "onnxruntime":
        raise UserError(f"backend '{backend}' is not available in this version (use torch or onnxruntime)")
    if onnx_file is None:
        raise UserError("--backend onnxruntime needs --onnx FILE (see `m2s2l-deploy export`)")
    try:
        from .runners.onnx_runner import OnnxRunner
    except ImportError:
        raise UserError("onnxruntime is not installed (pip install 'm2s2l-deploy[onnx]')") from None
    return OnnxRunner(onnx_file, checkpoint=checkpoint)


@app.command()
def export(checkpoint: Path = typer.Option(..., help="Run folder from `train`."),
           scan: str = typer.Option("loop", help="loop (ONNX Loop recurrence) | chunked (log-depth, bounded memory) | plugin (SelectiveScan custom node + function body)."),
           output: Optional[Path] = typer.Option(None, help="Output file (default export/m2s2l-PRESET-SCAN.onnx); with --split NAME.encoder.onnx + NAME.head.onnx."),
           opset: int = typer.Option(17, help="ONNX opset (>= 17)."),
           batch: str = typer.Option("dynamic", help="dynamic, or a fixed batch size N."),
           split: bool = typer.Option(False, "--split", help="Per-frame encoder + clip head (streams encode each frame once)."),
           chunk: int = typer.Option(256, help="--scan chunked: time steps per chunk (bounds memory; see export/README.md).")):
    """Export a checkpoint to ONNX (checked, with the input contract in its metadata)."""
    try:
        from .onnx_export import export_onnx, parse_batch
    except ImportError as e:
        raise UserError(f"export needs the onnx extra (pip install 'm2s2l-deploy[onnx]'): {e}") from None
    result = export_onnx(checkpoint, output, scan=scan, opset=opset, batch=parse_batch(batch), split=split, chunk=chunk)
    for path in result.paths:
        out.print(f"wrote {path} ({result.nodes[path.name]} nodes, scan '{result.scan_form}')")


# -- info -----------------------------------------------------------------------------------------
@app.command()
def info(preset: str = typer.Option("tiny", help="tiny|small|paper"),
         json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Parameters and FLOPs per clip of a preset (scans added by formula)."""
    from .model import preset_config
    from .model.flops import model_info

    r = model_info(preset_config(preset))
    if json_out:
        out.print_json(json.dumps(r))
        return
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
    out.print(t)


# -- demo -----------------------------------------------------------------------------------------
@app.command()
def demo(workdir: Path = typer.Option(Path("runs/demo"), "--workdir", help="Where the scene, run and report go."),
         minutes: float = typer.Option(10.0, help="Training budget for the tiny model (the README result: 10)."),
         train_seed: int = typer.Option(0, help="Seed of the training scene."),
         test_seed: int = typer.Option(1, help="Seed of the (different) test scene."),
         threads: Optional[int] = typer.Option(None, help="torch CPU threads.")):
    """The whole chain on an embedded default: synthesise, train tiny, evaluate on another seed."""
    from .data.synth import generate_scene
    from .train import TrainOptions, train as run_train

    workdir = Path(workdir)
    train_set, test_set, run = workdir / f"scene-seed{train_seed}", workdir / f"scene-seed{test_seed}", workdir / "run"
    for path, seed in ((train_set, train_seed), (test_set, test_seed)):
        if not (path / "scene.json").exists():
            console.print(f"synthesising scene seed {seed} -> {path}")
            generate_scene(path, seed=seed)
    if not (run / "config.json").exists():
        console.print(f"training tiny for {minutes:g} min -> {run}")
        opts = TrainOptions(preset="tiny", minutes=minutes, seed=train_seed, threads=threads)
        with _progress() as prog:
            def factory(total_steps, budget_s):
                return _train_progress(prog, total_steps, budget_s)
            run_train(train_set, run, opts=opts, log=console.print, progress_factory=factory)
    else:
        console.print(f"reusing trained checkpoint {run}")
    report = run_evaluate(run, test_set, "frames", 16, 3.0, workdir / "plots")
    out.print(_report_table(report, f"tiny on unseen scene seed {test_seed}: {report['n_frames']} frames"))
    if (t := _ablation_table(report)) is not None:
        out.print(t)
    report["deploy"] = _demo_deploy(run, train_set, test_set, workdir, test_seed)
    _write_json(workdir / "report.json", report)


def _demo_deploy(run: Path, train_set: Path, test_set: Path, workdir: Path, test_seed: int) -> dict | None:
    """Demo, deployment half: export, validate fp32 and INT8 ONNX, build an engine, bench a video."""
    try:
        from .engine.calibration import calibration_set
        from .engine.precision import to_int8
        from .onnx_export import export_onnx
        from .runners.onnx_runner import OnnxRunner  # noqa: F401  (fails early without onnxruntime)
    except ImportError:
        console.print("onnx / onnxruntime not installed: skipping export, validate and bench "
                      "(pip install 'm2s2l-deploy[onnx]')")
        return None
    import onnx

    from .bench import run_bench
    from .data.synth import render_video_file
    from .model.checkpoint import atomic_write_bytes
    from .runners import TorchRunner
    from .validate import load_test_set, record_run, run_validate

    fp32 = export_onnx(run, workdir / "m2s2l-tiny-loop.onnx", scan="loop").paths[0]
    console.print(f"exported {fp32}")
    reference = TorchRunner(run)
    videos = load_test_set(test_set, "frames", reference.contract, log=lambda *_: None)
    console.print(f"validate: PyTorch reference on {len(videos)} test videos")
    ref = record_run(reference, videos)
    clips, _ = calibration_set(reference.contract, train_set, n_clips=64, cache_dir=workdir / "calibration")
    int8_model, _ = to_int8(onnx.load(str(fp32)), clips, "minmax")
    int8 = workdir / "m2s2l-tiny-loop-int8.onnx"
    atomic_write_bytes(int8, lambda tmp: onnx.save(int8_model, str(tmp)))
    console.print(f"quantized {int8} (Q/DQ INT8, {len(clips)} calibration clips from the training videos)")
    reports = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        reports[name] = run_validate(run, onnx=path, data=test_set, dataset="frames", reference=ref, test_set=videos,
                                     markdown_out=workdir / f"validate-{name}.md", log=lambda *_: None)
    t = Table(title="validate vs PyTorch (CPU, loop scan, micro AUC paper protocol)")
    for col in ("form", "AUC", "ΔAUC", "corr", "p99 err", "ms/clip (×)", "gate"):
        t.add_column(col, no_wrap=True)
    r0 = reports["fp32"]["reference"]
    t.add_row("torch fp32", _fmt(r0["auc_micro"]), "ref", "", "", f"{r0['ms_per_clip']:.1f}", "")
    for name, r in reports.items():
        t.add_row(f"ORT {name}", _fmt(r["candidate"]["auc_micro"]), f"{r['delta_auc']['auc_micro']:+.4f}",
                  _fmt(min(r["correlation"]["pearson"], r["correlation"]["spearman"])),
                  f"{r['output_error']['frame_score']['p99_rel']:.2g}",
                  f"{r['candidate']['ms_per_clip']:.1f} ({r['speedup']:.2f}x)",
                  "[green]pass[/green]" if r["passed"] else "[red]FAIL[/red]")
    out.print(t)
    for name, r in reports.items():
        for w in r["warnings"]:
            console.print(f"[yellow]validate {name}: {w}[/yellow]", highlight=False)
    result = {"onnx": str(fp32), "int8_onnx": str(int8),
              "validate": {k: {kk: r[kk] for kk in ("passed", "precision", "reference", "candidate", "delta_auc",
                                                     "delta_auc_resolution", "warnings", "correlation", "speedup",
                                                     "gates")} for k, r in reports.items()}}
    result["engine"] = _demo_engine(fp32, workdir)
    video = workdir / "bench-cyclist.avi"
    labels = render_video_file(video, seed=test_seed + 100, n_frames=120, events=("cyclist",))
    console.print(f"bench: {video} (synthetic, a cyclist passes) through ONNX Runtime, threshold from calibration")
    from .cli_bench import print_bench_summary
    summary = run_bench(video, onnx=fp32, checkpoint=run, threshold="auto", plot=workdir / "bench.png",
                        json_out=workdir / "bench.json", labels=labels, log=lambda *_: None)
    print_bench_summary(summary)
    result["bench"] = {k: summary.get(k) for k in ("fps_model", "fps_e2e", "latency_ms", "n_frames", "alerts")}
    return result


def _demo_engine(onnx_path: Path, workdir: Path) -> dict | None:
    """Demo step: an FP16 TensorRT engine when a TensorRT backend is installed (built, never run here)."""
    from .engine.backend import available_backends

    if not available_backends():
        console.print("no TensorRT backend installed: skipping the engine build "
                      "(pip install 'm2s2l-deploy\\[tensorrt]')")
        return None
    from .engine.build import build_engine

    plan = workdir / "engines" / "m2s2l-tiny-loop-fp16.plan"
    r = build_engine(onnx_path, plan, precision="fp16")
    console.print(f"built {r.plan} with {r.backend} in {r.build_seconds:.1f} s (fp16, sidecar {r.sidecar.name}); "
                  "built ahead of time, not run: no GPU here can execute it")
    return {"plan": str(r.plan), "backend": r.backend, "precision": r.precision, "build_seconds": r.build_seconds}


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    if version:
        out.print(f"m2s2l-deploy {__version__}")
        raise typer.Exit()


def main() -> None:
    try:
        rc = app(standalone_mode=False)  # returns typer.Exit's code instead of exiting
    except UserError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        console.print("[red]aborted[/red]")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # usage errors (Typer's bundled click) arrive here in non-standalone mode
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(e.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


# Commands that live in their own modules register themselves on `app` when imported.
from . import cli_bench, cli_engine, cli_serve  # noqa: E402,F401

if __name__ == "__main__":
    # Run through the package module so the command modules above register on the same `app`.
    from m2s2l_deploy.cli import main as _main
    _main()
