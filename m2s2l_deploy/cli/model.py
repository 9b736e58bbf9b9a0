"""Verbs that make and measure a model: ``synth``, ``train``, ``evaluate``, ``info``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from .common import (DATASETS, console, counting_progress, fmt, needs_torch, out, parse_size, progress,
                     set_torch_threads, train_progress, write_json)
from .tables import ablation_table, info_table, report_table


def synth(out_dir: Path = typer.Argument(..., metavar="OUT", help="Folder to create (must not exist or be empty)."),
          seed: int = typer.Option(0, help="Pedestrians, timing and anomalies; the scene layout stays fixed."),
          size: str = typer.Option("120x160", help="Frame size HxW."),
          n_train: int = typer.Option(8, "--train", help="Training videos (normal only)."),
          n_test: int = typer.Option(7, "--test", help="Test videos: each event type once, two clean, then round again."),
          scene: int = typer.Option(0, help="Scene layout (background, walkway); keep it fixed between train and test sets."),
          events: str = typer.Option("", help="Comma-separated event types of the test videos, from: cyclist, cart, "
                                     "static_object, unusual_object, running, wrong_way (default: all but wrong_way).")):
    """Write a synthetic Ped2-like surveillance scene in the generic `frames` layout."""
    from ..data.synth import DEFAULT_EVENTS, generate_scene

    h, w = parse_size(size)
    if n_train < 1 or n_test < 0:
        raise UserError("--train must be >= 1 and --test >= 0")
    with progress() as prog:
        task = prog.add_task("synth", total=None, info="")

        def cb(done, total):
            prog.update(task, completed=done, total=total)
        meta = generate_scene(out_dir, seed=seed, size=(h, w), n_train=n_train, n_test=n_test, scene=scene, progress=cb,
                              events=tuple(e.strip() for e in events.split(",") if e.strip()) or DEFAULT_EVENTS)
    n_events = sum(len(v.get("events", [])) for v in meta["videos"].values())
    out.print(f"wrote {out_dir}: {n_train} training + {n_test} test videos, {n_events} anomaly events, {h}x{w} @ {meta['fps']} fps")


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
          clip_len: int = typer.Option(5, "--clip-len", help="Frames per clip: history + the target. At 7 the "
                                       "model finds objects that move too fast a little better, loses a little on "
                                       "objects at walking speed and costs about 1.4x per step (docs/results.md: "
                                       "seven-frame clips)."),
          sparse_history: bool = typer.Option(False, help="Encode the two frames before the target and every second "
                                              "one before those (with --clip-len 7: 4 of 6 history frames, the cost "
                                              "of 5-frame clips). On the development sets it finds objects that move too "
                                              "fast better and loses a little on objects at walking speed; not "
                                              "measured on UCSD Ped2 (docs/results.md: sparse history)."),
          resume: bool = typer.Option(False, help="Continue the run in --out (weights and optimiser state)."),
          threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
          device: str = typer.Option("cpu", help="cpu (scans by the Numba form when Numba is installed) | cuda | cuda:N."),
          json_out: Optional[Path] = typer.Option(None, "--json", help="Write the training summary as JSON.")):
    """Train M2S2L on normal footage; the last training video calibrates the score."""
    needs_torch("train")
    from ..jobs.train import TrainOptions, train as run_train

    if channels not in ("auto", "1", "3"):
        raise UserError("--channels must be auto, 1 or 3")
    if batch < 1:
        raise UserError("--batch must be >= 1")
    if clip_len < 3:
        raise UserError("--clip-len must be >= 3 (at least two history frames and the target)")
    if sum(x is not None for x in (epochs, minutes, steps)) > 1:
        raise UserError("give one of --epochs, --minutes, --steps")
    opts = TrainOptions(preset=preset, epochs=epochs, minutes=minutes, steps=steps, batch=batch, lr=lr, seed=seed,
                        channels=channels, resize=resize, clip_len=clip_len, sparse_history=sparse_history,
                        resume=resume, device=device)
    set_torch_threads(threads)
    with progress() as prog:
        def factory(total_steps, budget_s):
            return train_progress(prog, total_steps, budget_s)
        summary = run_train(data, out_dir, layout=dataset, opts=opts, log=console.print, progress_factory=factory)
    out.print(f"trained {summary['preset']} for {summary['steps']} steps ({summary['train_seconds']:.0f} s), "
              f"final loss {fmt(summary['final_loss'])}; checkpoint in {out_dir}")
    write_json(json_out, summary)


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
        from ..runners.onnx_runner import OnnxRunner
    except ImportError:
        raise UserError("onnxruntime is not installed (pip install 'm2s2l-deploy[onnx]')") from None
    return OnnxRunner(onnx_file, checkpoint=checkpoint)


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
    runner = _onnx_runner(backend, onnx, checkpoint)
    if runner is None:
        needs_torch("evaluate --backend torch")
    from ..jobs.evaluate import evaluate_checkpoint

    with progress() as prog:
        report = evaluate_checkpoint(checkpoint, data, dataset, batch, smooth, plots, runner=runner, device=device,
                                     progress_factory=counting_progress(prog), log=console.print)
    out.print(report_table(report, f"{report['n_frames']} frames, {report['n_videos']} videos"))
    if (t := ablation_table(report)) is not None:
        out.print(t)
    write_json(json_out, report)


def info(preset: str = typer.Option("tiny", help="tiny|small|paper"),
         json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Parameters and FLOPs per clip of a preset (scans added by formula)."""
    needs_torch("info")
    from ..model import preset_config
    from ..model.flops import model_info

    r = model_info(preset_config(preset))
    if json_out:
        out.print_json(json.dumps(r))
        return
    out.print(info_table(preset, r))
