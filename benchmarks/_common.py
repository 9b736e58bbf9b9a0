"""Pieces every benchmark script shares: the machine line, interleaved timing, a checkpoint per
preset, and writing one section of docs/benchmarks.md (scripts run as `python benchmarks/X.py`,
so this module is importable by name)."""

from __future__ import annotations

import importlib
import os
import platform
import random
import re
import time
from pathlib import Path

import numpy as np

from m2s2l_deploy.files import atomic_write_bytes
from m2s2l_deploy.runners.factory import cpu_name


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
