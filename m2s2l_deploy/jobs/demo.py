"""``demo``: the whole chain on an embedded default, as a function the CLI (or a notebook) calls.

Synthesise a scene, train ``tiny`` for a wall-clock budget, evaluate it on a scene of another
seed; then, when the ONNX tools are installed: export (the plugin form for the CPU, whose scans
ONNX Runtime runs as one compiled op, and the portable loop form for engines), quantize a Q/DQ
INT8 copy of the plugin form from calibration clips of the training videos, validate both against
PyTorch (fp32 at batch 16 and 1, so both speed-ups are printed), build an FP16 engine of the loop
form ahead of time when a TensorRT backend is installed, and bench a synthetic video with a
passing cyclist through ONNX Runtime. Results go to ``workdir`` and ``report.json``.

The job prints nothing itself: ``log`` gets progress lines and ``show(kind, payload)`` each result
as it is ready (``"evaluate"`` report, ``"validate"`` reports, ``"bench"`` summary), so the CLI
decides how they look.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..files import atomic_write_bytes, atomic_write_json


def _quiet(*_):
    return None


def run_demo(workdir: Path = Path("runs/demo"), minutes: float = 10.0, train_seed: int = 0, test_seed: int = 1,
             log: Callable[[str], None] = print, show: Callable[[str, object], None] = _quiet,
             train_progress_factory=None, eval_progress_factory=None) -> dict:
    """Run the demo in ``workdir`` (reusing a scene or checkpoint already there); returns the report."""
    from ..data.synth import generate_scene
    from .evaluate import evaluate_checkpoint
    from .train import TrainOptions, train

    workdir = Path(workdir)
    train_set, test_set, run = workdir / f"scene-seed{train_seed}", workdir / f"scene-seed{test_seed}", workdir / "run"
    for path, seed in ((train_set, train_seed), (test_set, test_seed)):
        if not (path / "scene.json").exists():
            log(f"synthesising scene seed {seed} -> {path}")
            generate_scene(path, seed=seed)
    if not (run / "config.json").exists():
        log(f"training tiny for {minutes:g} min -> {run}")
        train(train_set, run, opts=TrainOptions(preset="tiny", minutes=minutes, seed=train_seed), log=log,
              progress_factory=train_progress_factory)
    else:
        log(f"reusing trained checkpoint {run}")
    report = evaluate_checkpoint(run, test_set, "frames", 16, 3.0, workdir / "plots",
                                 progress_factory=eval_progress_factory, log=log)
    show("evaluate", report)
    report["deploy"] = _deploy(run, train_set, test_set, workdir, test_seed, log, show)
    atomic_write_json(workdir / "report.json", report)
    log(f"wrote {workdir / 'report.json'}")
    return report


def _deploy(run: Path, train_set: Path, test_set: Path, workdir: Path, test_seed: int, log, show) -> dict | None:
    """Deployment half: export, validate fp32 and INT8 ONNX, build an engine, bench a video."""
    try:
        import onnx
        import onnxruntime  # noqa: F401  (fails early without onnxruntime)
    except ImportError:
        log("onnx / onnxruntime not installed: skipping export, validate and bench "
            "(pip install 'm2s2l-deploy[onnx]')")
        return None
    from ..data.synth import render_video_file
    from ..engine.calibration import calibration_set
    from ..engine.precision import to_int8
    from ..export.exporter import export_onnx
    from ..runners.factory import RunnerSpec
    from ..runners.torch_runner import TorchRunner
    from .bench import BenchOutputs, run_bench
    from .validate import load_test_set, record_run, run_validate

    loop = export_onnx(run, workdir / "m2s2l-tiny-loop.onnx", scan="loop").paths[0]
    fp32 = export_onnx(run, workdir / "m2s2l-tiny-plugin.onnx", scan="plugin").paths[0]
    log(f"exported {loop} (portable: TensorRT, stock Triton) and {fp32} (the CPU form: its scans run "
        "as one compiled op in ONNX Runtime)")
    reference = TorchRunner(run)
    videos = load_test_set(test_set, "frames", reference.contract, log=_quiet)
    log(f"validate: PyTorch reference on {len(videos)} test videos")
    ref = record_run(reference, videos)
    clips, _ = calibration_set(reference.contract, train_set, n_clips=64, cache_dir=workdir / "calibration")
    int8_model, _ = to_int8(onnx.load(str(fp32)), clips, "minmax")
    int8 = workdir / "m2s2l-tiny-plugin-int8.onnx"
    atomic_write_bytes(int8, lambda tmp: onnx.save(int8_model, str(tmp)))
    log(f"quantized {int8} (Q/DQ INT8, {len(clips)} calibration clips from the training videos)")
    reports = {}
    for name, path, batch in (("fp32, batch 16", fp32, 16), ("fp32, batch 1", fp32, 1), ("int8, batch 16", int8, 16)):
        slug = name.replace(", batch ", "-b")
        reports[name] = run_validate(run, onnx=path, data=test_set, dataset="frames", reference=ref,
                                     reference_runner=reference, test_set=videos, batch=batch,
                                     markdown_out=workdir / f"validate-{slug}.md", log=_quiet)
    show("validate", reports)
    result = {"onnx": str(fp32), "loop_onnx": str(loop), "int8_onnx": str(int8),
              "validate": {k: {kk: r[kk] for kk in ("passed", "precision", "reference", "candidate", "delta_auc",
                                                     "delta_auc_resolution", "warnings", "correlation", "speedup",
                                                     "timing", "gates")} for k, r in reports.items()}}
    result["engine"] = _engine(loop, workdir, log)
    video = workdir / "bench-cyclist.avi"
    labels = render_video_file(video, seed=test_seed + 100, n_frames=120, events=("cyclist",))
    log(f"bench: {video} (synthetic, a cyclist passes) through ONNX Runtime, threshold from calibration")
    summary = run_bench(video, RunnerSpec(onnx=fp32, checkpoint=run),
                        BenchOutputs(json=workdir / "bench.json", plot=workdir / "bench.png"),
                        labels=labels, log=_quiet, threshold="auto")
    show("bench", summary)
    result["bench"] = {k: summary.get(k) for k in ("fps_model", "fps_e2e", "latency_ms", "n_frames", "alerts")}
    return result


def _engine(onnx_path: Path, workdir: Path, log) -> dict | None:
    """An FP16 TensorRT engine when a TensorRT backend is installed (built, never run here)."""
    from ..engine.backend import available_backends

    if not available_backends():
        log("no TensorRT backend installed: skipping the engine build (pip install 'm2s2l-deploy[tensorrt]')")
        return None
    from ..engine.build import build_engine

    plan = workdir / "engines" / "m2s2l-tiny-loop-fp16.plan"
    r = build_engine(onnx_path, plan, precision="fp16")
    log(f"built {r.plan} with {r.backend} in {r.build_seconds:.1f} s (fp16, sidecar {r.sidecar.name}); "
        "built ahead of time, not run: no GPU here can execute it")
    return {"plan": str(r.plan), "backend": r.backend, "precision": r.precision, "build_seconds": r.build_seconds}
