"""Synthetic accuracy where nobody tuned: train the demo's recipe with several training seeds, score
scenes of seeds that took part in no choice (the report seeds), mean and spread.

The demo's recipe: `tiny` on the seed-0 scene for 10 minutes (`--minutes 10`, the default), or a
fixed number of steps (`--steps N`: what 10 minutes buy on an idle machine, so that several runs
can share a machine without changing their models). Each training seed (`--seeds`, default 0 1 2)
trains once through the CLI; every model is evaluated (`evaluate`, defaults, unsmoothed) on each
report scene (`--report-seeds`, default 30 31 32 33 34). Model choices were made on development
seeds 20-24; the report seeds are for this table only.

    python benchmarks/synthetic_report.py --out runs/synth-report                   # 3 x 10 min, one at a time
    python benchmarks/synthetic_report.py --out runs/synth-report --steps 1000 --threads 1 --parallel 2
    python benchmarks/synthetic_report.py --out /tmp/sr --steps 5 --seeds 0 --report-seeds 30 --results /tmp/r.md

Writes OUT/synthetic_report.json and the section "## Synthetic report seeds: measured by
benchmarks/synthetic_report.py" of docs/results.md (--results).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from _common import cli, first_machine, publish, rescored_note  # noqa: E402


TITLE = "## Synthetic report seeds: measured by benchmarks/synthetic_report.py"


def scene(out: Path, seed: int) -> Path:
    path = out / "scenes" / f"seed{seed}"
    if not (path / "scene.json").exists():
        cli("synth", path, "--seed", seed, log=out / "synth.log")
    return path


def one_seed(out: Path, seed: int, budget: list[str], report_seeds: list[int], threads: int | None) -> dict:
    run, log = out / f"train-seed{seed}", out / f"seed{seed}.log"
    if not (run / "config.json").exists():
        print(f"training seed {seed} ({' '.join(budget)})", flush=True)
        extra = ["--threads", threads] if threads else []
        cli("train", "--data", scene(out, 0), "--out", run, "--seed", seed, *budget, *extra, log=log, threads=threads)
    scores = {}
    for rs in report_seeds:
        report = run / f"evaluate-seed{rs}.json"
        if not report.exists():
            cli("evaluate", "--checkpoint", run, "--data", scene(out, rs), "--json", report, log=log, threads=threads)
        ev = json.loads(report.read_text())
        scores[rs] = {"auc_micro": ev["auc_micro"], "auc_micro_causal": ev["auc_micro_causal"],
                      "baseline_auc_micro": ev["baseline_auc_micro"]}
    config = json.loads((run / "config.json").read_text())
    training = config["training"]
    print(f"seed {seed}: " + ", ".join(f"{rs} {s['auc_micro']:.3f}" for rs, s in scores.items()), flush=True)
    return {"seed": seed, "steps": training["steps"], "job_seconds": training.get("job_seconds"),
            "threads": training.get("threads"), "scores": scores, "rescored_from": config.get("rescored_from")}


def render(result: dict) -> str:
    rows, report_seeds = result["seeds"], result["report_seeds"]
    lines = [TITLE, "",
             f"Measured {result['date']} on {result['machine']}. Training: `{result['train_command']}` "
             f"on the seed-0 scene (the demo's); evaluated with `evaluate` defaults (unsmoothed micro AUC, "
             f"paper protocol; causal in brackets) on report scenes {', '.join(map(str, report_seeds))}, "
             "which took part in no choice.", "",
             "| training seed | steps | " + " | ".join(f"scene {s}" for s in report_seeds) + " | mean |",
             "| --- | --- |" + " --- |" * (len(report_seeds) + 1)]
    for r in rows:
        m = [r["scores"][s]["auc_micro"] for s in report_seeds]
        lines.append(f"| {r['seed']} | {r['steps']} | " + " | ".join(
            f"{r['scores'][s]['auc_micro']:.3f} ({r['scores'][s]['auc_micro_causal']:.3f})" for s in report_seeds)
            + f" | {np.mean(m):.3f} |")
    base = [rows[0]["scores"][s]["baseline_auc_micro"] for s in report_seeds]
    lines.append("| frame difference | | " + " | ".join(f"{b:.3f}" for b in base) + f" | {np.mean(base):.3f} |")
    means = np.array([np.mean([r["scores"][s]["auc_micro"] for s in report_seeds]) for r in rows])
    causal = np.array([np.mean([r["scores"][s]["auc_micro_causal"] for s in report_seeds]) for r in rows])
    allv = np.array([r["scores"][s]["auc_micro"] for r in rows for s in report_seeds])
    lines += ["", f"Mean micro AUC over training seeds: **{means.mean():.3f}** (spread over training seeds: "
              f"std {means.std(ddof=1) if len(means) > 1 else 0:.3f}, worst seed {means.min():.3f}); causal "
              f"{causal.mean():.3f}; single (seed, scene) pairs range {allv.min():.3f}–{allv.max():.3f}."]
    lines += rescored_note(rows)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/synth-report"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--report-seeds", type=int, nargs="+", default=[30, 31, 32, 33, 34])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--steps", type=int, help="a fixed step budget instead of --minutes")
    ap.add_argument("--threads", type=int, help="CPU threads per job (with --parallel)")
    ap.add_argument("--parallel", type=int, default=1, help="training seeds run at once (use --steps then)")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    a = ap.parse_args()
    if a.parallel > 1 and not a.steps:
        sys.exit("--parallel needs --steps: runs sharing a machine would get fewer steps out of --minutes")
    a.out.mkdir(parents=True, exist_ok=True)
    started = first_machine(a.out, "torch")
    for s in [0, *a.report_seeds]:
        scene(a.out, s)
    budget = ["--steps", str(a.steps)] if a.steps else ["--minutes", f"{a.minutes:g}"]
    with ThreadPoolExecutor(a.parallel) as pool:
        rows = list(pool.map(lambda s: one_seed(a.out, s, budget, a.report_seeds, a.threads), a.seeds))
    result = {"date": started["date"], "machine": started["machine"], "report_seeds": a.report_seeds,
              "train_command": f"m2s2l-deploy train --data SCENE0 --out RUN {' '.join(budget)} --seed S", "seeds": rows}
    publish(result, a.out / "synthetic_report.json", render, a.results, TITLE)


if __name__ == "__main__":
    main()
