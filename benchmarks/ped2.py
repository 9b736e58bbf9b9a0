"""UCSD Ped2 end to end, through the CLI as a user runs it: train, evaluate, deploy, bench.

1. Train with the README's train command, only --data (and --out, --seed) set, once per training
   seed (`--seeds`, default 0 1 2), one job at a time; `--minutes` (default 15) is the whole job's
   budget, data preparation and calibration included.
2. `evaluate` each run with defaults: micro / macro AUC (paper protocol: per-video min-max),
   causal micro AUC, the frame-difference baseline, the ablation, per-video AUC.
3. On the first seed's run, the deployment chain: `export` (loop scan) -> `build-engine --fp16`
   and `build-engine --int8 --calib-data PED2` (Q/DQ INT8 calibrated on Ped2's training frames;
   the engine plans are built ahead of time, never run here) -> `validate` of the fp32, FP16 and
   INT8 ONNX on the 12 test videos -> `bench` of every test video's frame folder through ONNX
   Runtime at batch 1 (live), its alerts scored against the labelled frames.
4. Writes OUT/ped2.json and the section "## UCSD Ped2: measured by benchmarks/ped2.py" of
   docs/results.md (--results), with the date and the machine.

    python benchmarks/ped2.py --data PED2_ROOT --out runs/ped2                      # 3 seeds x 15 min + deploy
    python benchmarks/ped2.py --data PED2_ROOT --out /tmp/p2 --steps 30 --seeds 0 --results /tmp/r.md  # smoke

A seed whose run folder already holds an evaluation is reused (the script can be resumed). PED2_ROOT
is either layout of docs/data.md; it is only read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from _common import cli, first_machine, publish, rescored_note, training_budget, training_budget_args  # noqa: E402


TITLE = "## UCSD Ped2: measured by benchmarks/ped2.py"
ABLATION = ("appearance-only", "motion-only", "speed-only", "background-only", "combined", "quality-aware")


def train_and_evaluate(data: Path, out: Path, seed: int, budget: list[str], log: Path) -> dict:
    run, report = out / f"seed{seed}", out / f"seed{seed}" / "evaluate.json"
    if not report.exists():
        if (run / "config.json").exists():
            print(f"seed {seed}: reusing {run}")
        else:
            print(f"seed {seed}: training ({' '.join(budget)})", flush=True)
            cli("train", "--data", data, "--out", run, "--seed", seed, *budget, log=log)
        print(f"seed {seed}: evaluating", flush=True)
        cli("evaluate", "--checkpoint", run, "--data", data, "--json", report, log=log)
    ev = json.loads(report.read_text())
    config = json.loads((run / "config.json").read_text())
    training = config["training"]
    return {"seed": seed, "run": str(run), "steps": training["steps"], "train_seconds": training["train_seconds"],
            "job_seconds": training.get("job_seconds"), "threads": training.get("threads"),
            "auc_micro": ev["auc_micro"], "auc_macro": ev["auc_macro"], "auc_micro_causal": ev["auc_micro_causal"],
            "baseline_auc_micro": ev["baseline_auc_micro"],
            "ablation": {k: ev["ablation"][k]["auc_micro"] for k in ABLATION if k in ev.get("ablation", {})},
            "per_video": {v: r["auc"] for v, r in ev["per_video"].items()},
            "rescored_from": config.get("rescored_from")}


def deploy(data: Path, run: Path, out: Path, log: Path) -> dict:
    """export -> FP16 / INT8 (engine plans built ahead of time) -> validate each ONNX -> bench every test video."""
    dep = out / "deploy"
    dep.mkdir(parents=True, exist_ok=True)
    fp32 = dep / "m2s2l-ped2-loop.onnx"
    if not fp32.exists():
        cli("export", "--checkpoint", run, "--output", fp32, log=log)
    forms = {"fp32": fp32}
    for precision, flags in (("fp16", ["--fp16"]), ("int8", ["--int8", "--calib-data", data,
                                                              "--calib-dir", dep / "calibration"])):
        plan = dep / "engines" / f"m2s2l-ped2-loop-{precision}.plan"
        if not plan.exists():
            cli("build-engine", "--onnx", fp32, *flags, "--output", plan, log=log)
        forms[precision] = plan.with_suffix(".onnx")      # build-engine writes the ONNX it built beside the plan
    validation = {}
    for precision, path in forms.items():
        report = dep / f"validate-{precision}.json"
        if not report.exists():
            print(f"validate {precision}: {path.name}", flush=True)
            cli("validate", "--checkpoint", run, "--onnx", path, "--data", data, "--json", report, log=log, ok=(0, 1))
        r = json.loads(report.read_text())
        validation[precision] = {k: r[k] for k in ("passed", "failed_gates", "delta_auc", "correlation", "gates",
                                                   "speedup", "warnings")}
        validation[precision]["onnx"] = str(path)
    return {"onnx": {k: str(v) for k, v in forms.items()}, "validate": validation,
            "bench": bench_test_videos(data, fp32, run, dep, log)}


def bench_test_videos(data: Path, onnx: Path, run: Path, dep: Path, log: Path) -> dict:
    """`bench` on each test video's frame folder (live: batch 1), alerts scored against its labels."""
    from m2s2l_deploy.data import open_dataset
    from m2s2l_deploy.data.readers import label_runs
    from m2s2l_deploy.report.alerts import AlertEvent, score_alerts

    totals = {"events": 0, "found": 0, "missed": 0, "alerts": 0, "false_alerts": 0, "delay_frames": []}
    per_video, fps = {}, []
    for video in open_dataset(data).test:
        if video.labels is None:
            continue
        source = video.video_path or video.frame_paths[0].parent        # a video file or its frame folder
        out = dep / "bench" / f"{video.name}.json"
        if not out.exists():
            cli("bench", source, "--onnx", onnx, "--checkpoint", run, "--batch", 1, "--json", out, log=log)
        summary = json.loads(out.read_text())
        events = [AlertEvent(**{k: a[k] for k in ("start_frame", "end_frame", "peak_frame", "peak_score",
                                                  "raised_frame")}) for a in summary["alerts"]]
        r = score_alerts(events, label_runs(video.labels[:summary["n_frames"]]))
        per_video[video.name] = r
        fps.append(summary["fps_model"])
        for k in totals:
            totals[k] += r[k]
    return {**totals, "per_video": per_video, "fps_model_median": float(np.median(fps)) if fps else None}


def render(result: dict) -> str:
    seeds = result["seeds"]

    def stats(key, sub=None):
        vals = np.array([s[key] if sub is None else s[key].get(sub, np.nan) for s in seeds], float)
        return f"{vals.mean():.3f} (worst {vals.min():.3f})" if len(vals) > 1 else f"{vals[0]:.3f}"

    lines = [TITLE, "",
             f"Measured {result['date']} on {result['machine']}. Training: `{result['train_command']}`, "
             f"one job at a time; the budget covers the whole job (data preparation and calibration). "
             f"AUC: `evaluate` with defaults, unsmoothed, frame level, 12 test videos, "
             f"{seeds[0].get('n_frames', 2010)} frames.", "",
             "| training seed | steps | job minutes | micro AUC (paper) | macro AUC (paper) | micro AUC (causal) "
             "| " + " | ".join(ABLATION) + " | frame difference |",
             "| --- | --- | --- | --- | --- | --- |" + " --- |" * (len(ABLATION) + 1)]
    for s in seeds:
        ab = [f"{s['ablation'][k]:.3f}" if k in s["ablation"] else "–" for k in ABLATION]
        job = s["job_seconds"] or s["train_seconds"]
        lines.append(f"| {s['seed']} | {s['steps']} | {job / 60:.1f} | {s['auc_micro']:.3f} | {s['auc_macro']:.3f} "
                     f"| {s['auc_micro_causal']:.3f} | {' | '.join(ab)} | {s['baseline_auc_micro']:.3f} |")
    if len(seeds) > 1:
        lines.append(f"| **mean (worst)** | | | **{stats('auc_micro')}** | {stats('auc_macro')} "
                     f"| {stats('auc_micro_causal')} | "
                     + " | ".join(stats("ablation", k) for k in ABLATION) + f" | {stats('baseline_auc_micro')} |")
    videos = sorted(seeds[0]["per_video"])
    lines += rescored_note(seeds)
    lines += ["", "Per-video AUC (paper protocol; – where a video is anomalous in every frame):", "",
              "| training seed | " + " | ".join(videos) + " |", "| --- |" + " --- |" * len(videos)]
    for s in seeds:
        lines.append(f"| {s['seed']} | " + " | ".join("–" if s['per_video'][v] is None else f"{s['per_video'][v]:.2f}" for v in videos) + " |")
    dep = result.get("deploy")
    if dep:
        lines += ["", f"Deployment chain on the seed-{seeds[0]['seed']} model (ONNX loop scan; FP16 and INT8 "
                  "engine plans built ahead of time and not run: no GPU here can run them; `validate` checks "
                  "the ONNX forms with ONNX Runtime on the 12 test videos, gates unchanged; its speed "
                  "column is left out here: CPU speed is measured in docs/benchmarks.md):", "",
                  "| form | ΔAUC micro (paper / causal) | score correlation (min of Pearson, Spearman) "
                  "| frame-score error p99 (relative) | passed |",
                  "| --- | --- | --- | --- | --- |"]
        for k, v in dep["validate"].items():
            g = {x["name"]: x for x in v["gates"]}
            d = v["delta_auc"]
            lines.append(f"| {k} | {d['auc_micro']:+.4f} / {d['auc_micro_causal']:+.4f} "
                         f"| {g['correlation']['value']:.4f} (≥ {g['correlation']['limit']:g}) "
                         f"| {g['output_error']['value']:.4f} (≤ {g['output_error']['limit']:g}) "
                         f"| {'yes' if v['passed'] else '**no**: ' + ', '.join(v['failed_gates'])} |")
        b = dep["bench"]
        delays = b["delay_frames"]
        lines += ["", f"`bench` on the 12 test videos' frame folders (fp32 ONNX, batch 1, the stored threshold, "
                  f"alert after 3 frames above it): {b['found']} of {b['events']} labelled events found, "
                  f"{b['missed']} missed, {b['false_alerts']} false alerts of {b['alerts']}; frames from event "
                  f"start to alert: median {np.median(delays) if delays else float('nan'):.0f}, max "
                  f"{max(delays) if delays else float('nan')}; model {b['fps_model_median']:.0f} frames/s (median)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="UCSD Ped2 root (either layout of docs/data.md)")
    ap.add_argument("--out", type=Path, default=Path("runs/ped2"))
    training_budget_args(ap, minutes=15.0)
    ap.add_argument("--skip-deploy", action="store_true")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    a = ap.parse_args()
    if not a.data.is_dir():
        sys.exit(f"{a.data} is not a folder")
    a.out.mkdir(parents=True, exist_ok=True)
    log = a.out / "commands.log"
    started = first_machine(a.out, "torch", "onnxruntime")
    budget = training_budget(a)
    t0 = time.time()
    seeds = [train_and_evaluate(a.data, a.out, s, budget, log) for s in a.seeds]
    result = {"date": started["date"], "machine": started["machine"],
              "train_command": f"m2s2l-deploy train --data PED2 --out RUN {' '.join(budget)} --seed S",
              "seeds": seeds}
    if not a.skip_deploy:
        result["deploy"] = deploy(a.data, Path(seeds[0]["run"]), a.out, log)
    result["wall_seconds"] = round(time.time() - t0, 1)
    publish(result, a.out / "ped2.json", render, a.results, TITLE)


if __name__ == "__main__":
    main()
