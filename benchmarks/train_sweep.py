"""Training-seed spread and training-set size at a fixed step budget: several gpu_train.py runs side by side.

The accuracy number (paper-protocol micro AUC on the seed-1 scene) moves with the training
seed by a few hundredths, so one run cannot tell a better recipe from a lucky seed. This script
trains `tiny` for the same number of optimiser steps (default 1054: what 10 minutes buy on the
2-core CPU with the Numba scan form) once per (config, training seed) pair, where a config is the
number of training videos of the seed-0 scene and optionally a peak learning rate; evaluates every
model on the test seeds, and prints each row plus the mean and spread per config. A run
at equal steps on the GPU trains the same model as on the CPU (README, Results), so the GPU can
stand in for the CPU's 10 minutes here.

    python benchmarks/train_sweep.py --out runs/sweep --configs 8 4 8@0.004 --seeds 0 1 2 --parallel 6
    python benchmarks/train_sweep.py --out /tmp/sw --smoke        # CPU, seconds: checks the script only

Writes OUT/sweep.json (after each finished run) and OUT/sweep.md; each run's own folder holds its
gpu_train.json, scenes are shared in OUT/scenes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_config(spec: str) -> tuple[int, float | None]:
    """"8" -> 8 training videos, train's learning rate; "8@0.004" -> 8 videos, peak lr 0.004."""
    videos, _, lr = spec.partition("@")
    try:
        return int(videos), (float(lr) if lr else None)
    except ValueError:
        raise SystemExit(f"error: bad config '{spec}' (use VIDEOS or VIDEOS@LR, e.g. 8 or 8@0.004)") from None


def config_name(spec: str) -> str:
    videos, lr = parse_config(spec)
    return f"t{videos}" + (f"-lr{lr:g}" if lr else "")


def run_name(spec: str, seed: int) -> str:
    return f"{config_name(spec)}-s{seed}"


def launch(out: Path, spec: str, seed: int, args) -> subprocess.Popen:
    videos, lr = parse_config(spec)
    name = run_name(spec, seed)
    cmd = [sys.executable, str(HERE / "gpu_train.py"), "--out", str(out / name),
           "--scenes", str(out / "scenes"), "--seed", str(seed), "--train-videos", str(videos),
           "--device", args.device, "--test-seeds", *map(str, args.test_seeds)]
    cmd += ["--smoke"] if args.smoke else ["--steps", str(args.steps)]
    cmd += ["--lr", str(lr)] if lr else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with open(out / f"{name}.log", "w") as log:      # the child keeps its own handle
        # a session of its own, so that the deadline can stop the run with the CLI commands it started
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def collect(out: Path, spec: str, seed: int) -> dict:
    row = {"config": config_name(spec), "seed": seed}
    path = out / run_name(spec, seed) / "gpu_train.json"
    if not path.exists():
        return {**row, "error": "no result"}
    r = json.loads(path.read_text())
    row.update(steps=r.get("training", {}).get("steps"), train_seconds=r.get("training", {}).get("train_seconds"),
               device=r.get("training", {}).get("device"))
    for s, e in r.get("evaluate", {}).items():
        row[f"s{s}"] = e if "error" in e else {k: round(e[k], 4) for k in ("auc_micro", "auc_macro", "auc_micro_causal")}
    return row


def render(result: dict, test_seeds) -> str:
    head = " | ".join(f"seed {s} micro / macro / causal" for s in test_seeds)
    lines = [f"`tiny`, {result['budget']} per run, {result['parallel']} runs at a time on {result['device']}; "
             f"paper-protocol micro / macro AUC and causal micro AUC per test scene.", "",
             f"| config | training seed | steps | {head} |", "|---" * (3 + len(test_seeds)) + "|"]
    for row in result["runs"].values():
        cells = []
        for s in test_seeds:
            e = row.get(f"s{s}", {"error": row.get("error", "missing")})
            cells.append(f"failed: {e['error'][:40]}" if "error" in e else
                         f"{e['auc_micro']:.3f} / {e['auc_macro']:.3f} / {e['auc_micro_causal']:.3f}")
        lines.append(f"| {row['config']} | {row['seed']} | {row.get('steps', '?')} | " + " | ".join(cells) + " |")
    lines += ["", "| config | runs | " + " | ".join(f"seed {s} micro mean ± sd" for s in test_seeds)
              + " | all seeds micro mean |", "|---" * (3 + len(test_seeds)) + "|"]
    for config in result["configs"]:
        rows = [r for r in result["runs"].values() if r["config"] == config]
        cells, every = [], []
        for s in test_seeds:
            vals = [r[f"s{s}"]["auc_micro"] for r in rows if "auc_micro" in r.get(f"s{s}", {})]
            every += vals
            cells.append(f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else
                         (f"{vals[0]:.3f}" if vals else "-"))
        n = len([r for r in rows if "error" not in r])
        lines.append(f"| {config} | {n} | " + " | ".join(cells) + (f" | {statistics.mean(every):.3f} |" if every else " | - |"))
    return "\n".join(lines)


def save(out: Path, result: dict, test_seeds) -> None:
    for name, text in (("sweep.json", json.dumps(result, indent=2)), ("sweep.md", render(result, test_seeds) + "\n")):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1054, help="optimiser steps per run (1054 = 10 CPU minutes here)")
    ap.add_argument("--configs", nargs="+", default=["8"],
                    help="training videos of the seed-0 scene, optionally @ peak lr: e.g. 8 4 8@0.004")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    ap.add_argument("--test-seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--parallel", type=int, default=3, help="runs at a time (they share the GPU)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per run")
    ap.add_argument("--deadline", type=float, default=0, help="seconds; stop runs still going then and report the rest")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny scenes, seconds of training: checks the script")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.test_seeds, args.configs, args.seeds = "cpu", args.test_seeds[:1], ["2"], args.seeds[:2]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    todo = [(c, s) for s in args.seeds for c in args.configs]      # by seed: each wave covers every config
    result = {"device": args.device, "budget": "seconds of training (smoke)" if args.smoke else f"{args.steps} steps",
              "parallel": args.parallel, "configs": [config_name(c) for c in args.configs], "seeds": args.seeds, "runs": {}}
    # scenes first (named as gpu_train.py names them, so every run reuses them)
    sys.path.insert(0, str(HERE))
    from gpu_train import make_scenes, scenes_needed
    wanted: dict = {}
    for videos in {parse_config(c)[0] for c in args.configs}:
        wanted.update(scenes_needed(out / "scenes", 0, videos, args.test_seeds, args.smoke))
    make_scenes(wanted, out / "synth.log")
    t0, running, pending = time.perf_counter(), {}, list(todo)
    while pending or running:
        while pending and len(running) < args.parallel:
            key = pending.pop(0)
            running[key] = launch(out, *key, args)
        time.sleep(1.0)
        for key, proc in list(running.items()):
            if proc.poll() is not None:
                del running[key]
                result["runs"][run_name(*key)] = collect(out, *key)
                save(out, result, args.test_seeds)
                print(f"[{time.perf_counter() - t0:5.0f} s] {run_name(*key)} finished (exit {proc.returncode})", flush=True)
        if args.deadline and time.perf_counter() - t0 > args.deadline and (running or pending):
            for key, proc in running.items():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                result["runs"][run_name(*key)] = {**collect(out, *key), "error": f"stopped at the {args.deadline:g} s deadline"}
            for key in pending:
                result["runs"][run_name(*key)] = {"config": config_name(key[0]), "seed": key[1],
                                                  "error": "not started before the deadline"}
            break
    save(out, result, args.test_seeds)
    print(render(result, args.test_seeds))
    return 0 if all("error" not in r for r in result["runs"].values()) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as err:     # synth failed: its own one-line error, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
