"""Pieces every benchmark script shares: the machine line, interleaved timing, a checkpoint per
preset, and writing one section of docs/benchmarks.md (scripts run as `python benchmarks/X.py`,
so this module is importable by name)."""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from m2s2l_deploy.errors import UserError
from m2s2l_deploy.files import atomic_write_bytes, atomic_write_json
from m2s2l_deploy.runners.factory import cpu_name


ROOT = Path(__file__).resolve().parents[1]


def cli(*args, log: Path, ok=(0,), threads: int | None = None) -> int:
    """Run one m2s2l-deploy command of this checkout (as a user would), its output appended to
    ``log``; an exit code outside ``ok`` ends the script with one line. ``threads`` caps the
    OpenMP and Numba pools (for jobs that share the machine)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    with open(log, "a") as f:
        f.write(f"$ m2s2l-deploy {' '.join(map(str, args))}\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "m2s2l_deploy.cli", *map(str, args)], stdout=f,
                              stderr=subprocess.STDOUT, env=env)
    if proc.returncode not in ok:
        sys.exit(f"m2s2l-deploy {args[0]} failed (exit {proc.returncode}); see {log}")
    return proc.returncode


def training_budget_args(ap, minutes: float) -> None:
    """--seeds / --minutes / --steps: the training jobs of a benchmark that trains as a user does."""
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--minutes", type=float, default=minutes, help=f"training budget of each job (default {minutes:g})")
    ap.add_argument("--steps", type=int, help="train a fixed number of steps instead (smoke runs)")


def training_budget(args) -> list[str]:
    """The train command's budget flags from ``training_budget_args``' options."""
    return ["--steps", str(args.steps)] if args.steps else ["--minutes", f"{args.minutes:g}"]


def machine(*modules: str) -> str:
    """CPU, cores, RAM, load at start, Python and the versions of ``modules`` (e.g. "torch")."""
    mem = ""
    try:
        kb = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")))
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    libs = "".join(f", {m} {importlib.import_module(m).__version__}" for m in modules)
    return (f"{cpu_name() or 'unknown CPU'}, {os.cpu_count()} logical cores{mem}; load average {load:.1f} "
            f"at start; Python {platform.python_version()}{libs}")


def timed_rounds(fns: dict, warmup: int, rounds: int, shuffle: bool = False) -> dict[str, float]:
    """Median seconds per call of each function, measured in interleaved rounds.

    On a shared machine the load drifts; calling every function once per round (after ``warmup``
    untimed calls each) exposes all of them to the same drift, and the median drops outliers.
    ``shuffle`` reorders each round (seeded): whatever runs right after PyTorch can pay for it.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    order, rng = list(fns), random.Random(0)
    for _ in range(rounds):
        if shuffle:
            rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def checkpoint_for(preset: str, root: Path, given: str | None) -> Path:
    """The given checkpoint for `tiny`, else a random-weights one (seed 0): timing needs no training."""
    import torch

    from m2s2l_deploy.contract import InputContract
    from m2s2l_deploy.model import M2S2L, preset_config
    from m2s2l_deploy.model.checkpoint import save_checkpoint

    if given and preset == "tiny":
        return Path(given)
    torch.manual_seed(0)
    cfg = preset_config(preset)
    contract = InputContract(cfg.height, cfg.width, cfg.in_channels, clip_len=cfg.clip_len)
    return save_checkpoint(root / preset, M2S2L(cfg).eval(), contract, {})


def first_machine(out: Path, *modules: str) -> dict:
    """``machine(*modules)`` and the date as a script's first run in ``out`` found them, kept in
    OUT/machine.json so that a resumed run (which only re-renders) reports the load its jobs ran under."""
    path = Path(out) / "machine.json"
    if not path.exists():
        atomic_write_json(path, {"machine": machine(*modules), "date": datetime.date.today().isoformat()})
    return json.loads(path.read_text())


def publish(result: dict, json_path: Path, render, results_md: Path, title: str) -> None:
    """Write a script's result JSON, print its rendered section and put it into ``results_md``."""
    atomic_write_json(json_path, result)
    text = render(result)
    print(text)
    write_section(results_md, title, text)


def write_section(path: Path, title: str, text: str) -> None:
    """Put ``text`` (which starts with the ``title`` heading) into ``path``: replace the section a
    previous run wrote (up to the next '## ' heading), else append it; written atomically."""
    path = Path(path)
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    section = text.strip() + "\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    doc = pattern.sub(lambda _: section + "\n", doc) if pattern.search(doc) else doc.rstrip("\n") + "\n\n" + section
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(doc))
    print(f"wrote section '{title}' of {path}")


def build_once(folder: Path, marker: str, build) -> None:
    """Build ``folder`` unless it already holds ``marker``: ``build(tmp)`` writes a temporary folder
    beside it, renamed into place once complete, so an interrupted or refused build never leaves a
    mixed folder. A UserError ends the script with its one line."""
    if (folder / marker).exists():
        return
    tmp = folder.with_name(f".{folder.name}.tmp")
    for stale in (tmp, folder):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        build(tmp)
    except UserError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(str(e))
    os.replace(tmp, folder)


def rescored_note(seeds: list[dict]) -> list[str]:
    """A line saying which models were re-scored (weights of an earlier run, score statistics
    recomputed on the same held-out training video), where any was."""
    src = [s["rescored_from"] for s in seeds if s.get("rescored_from")]
    if not src:
        return []
    return ["", "Re-scored models: the trained weights of " + ", ".join(f"`{Path(p).name}` of `{Path(p).parent.name}`" for p in src)
            + " with the current score; its statistics recomputed on the same held-out training video, as `train` "
              "does (the score is not part of the training loss, so retraining gives these weights again)."]
