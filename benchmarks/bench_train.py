"""CPU training speed: the Numba scan form vs the PyTorch CPU form (and the log-depth form).

Why: the accuracy target is for `tiny` trained 10 wall-clock minutes on a 2-core CPU, where
the selective scans are most of a training step; steps per minute is what the target buys. Measured
in one run, side by side, interleaved round by round: (1) forward + backward of every scan site of
`tiny` at its training shapes (batch 8 clips), one form after another on the same inputs; (2) whole
training steps (`train.training_loss`, backward, AdamW) with each form forced. Run:

    python benchmarks/bench_train.py [--threads 2] [--rounds 5] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from m2s2l_deploy.ops import scan
from m2s2l_deploy.model import M2S2L, preset_config
from m2s2l_deploy.jobs.train import TrainOptions, training_loss

from _common import machine, timed_rounds, write_section

SECTION = "## CPU training: scan forms"
FORMS = ("cpu", "numba", "parallel")


def scan_sites(model: M2S2L, clips: torch.Tensor) -> list[dict]:
    """The arguments of every selective_scan_fn call of one training forward (detached copies)."""
    seen = []
    original = scan.selective_scan_fn

    def record(*args, **kwargs):
        names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus")
        call = {**dict(zip(names, args)), **kwargs}
        seen.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in call.items()})
        return original(*args, **kwargs)

    scan.selective_scan_fn = record
    try:
        with torch.no_grad():
            model.outputs(clips)
    finally:
        scan.selective_scan_fn = original
    return seen


def site_runner(form: str, site: dict):
    leaves = {k: (v.clone().requires_grad_(True) if torch.is_tensor(v) and v.is_floating_point() else v)
              for k, v in site.items()}
    grad = torch.randn_like(site["u"])

    def run():
        for v in leaves.values():
            if torch.is_tensor(v):
                v.grad = None
        scan.selective_scan_fn(**leaves, form=form).backward(grad)
    return run


def step_runner(form: str, clips: torch.Tensor):
    torch.manual_seed(0)
    model = M2S2L(preset_config("tiny")).use_scan_form(form)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def run():
        loss, _ = training_loss(model, clips, TrainOptions())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--write", type=Path, help="replace the section of this Markdown file")
    args = ap.parse_args(argv)
    if scan._numba_kernel() is None:
        print("error: Numba is not importable here (pip install numba)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    info = machine("torch", "numba")
    torch.manual_seed(0)
    cfg = preset_config("tiny")
    clips = torch.rand(args.batch, cfg.clip_len, cfg.in_channels, cfg.height, cfg.width) * 2 - 1
    sites = scan_sites(M2S2L(cfg), clips)
    rows = []
    totals = dict.fromkeys(FORMS, 0.0)
    for i, site in enumerate(sites):
        b, d, length = site["u"].shape
        n = site["A"].shape[1]
        t = timed_rounds({f: site_runner(f, site) for f in FORMS}, warmup=1, rounds=args.rounds)
        for f in FORMS:
            totals[f] += t[f]
        rows.append(f"| scan {i + 1}: b {b} x d {d} x N {n} x L {length} | " +
                    " | ".join(f"{1e3 * t[f]:.1f}" for f in FORMS) + f" | {t['cpu'] / t['numba']:.2f}x |")
        print(rows[-1], flush=True)
    rows.append("| all scans of one step | " + " | ".join(f"{1e3 * totals[f]:.1f}" for f in FORMS) +
                f" | {totals['cpu'] / totals['numba']:.2f}x |")
    steps = timed_rounds({f: step_runner(f, clips) for f in FORMS}, warmup=2, rounds=args.rounds)
    rows.append("| whole training step (forward, backward, AdamW) | " +
                " | ".join(f"{1e3 * steps[f]:.0f}" for f in FORMS) + f" | {steps['cpu'] / steps['numba']:.2f}x |")
    print(rows[-1])
    text = "\n".join([
        SECTION, "",
        f"Measured by `python benchmarks/bench_train.py --write docs/benchmarks.md` on {time.strftime('%Y-%m-%d')}.", "",
        f"Machine: {info}", "",
        f"Settings: `tiny`, batch {args.batch} clips of {cfg.clip_len} frames, {args.threads} threads; median of "
        f"{args.rounds} rounds, forms interleaved round by round after a warm-up (the Numba kernels are compiled "
        f"before timing); scan rows = forward + backward of one scan site at its training shape; total "
        f"{time.perf_counter() - t_start:.0f} s.", "",
        "| what | PyTorch CPU form ms | Numba form ms | log-depth form ms | Numba vs PyTorch CPU form |",
        "|---|---|---|---|---|", *rows, "",
        "The log-depth form is the CUDA training form, shown for reference: on a CPU it materialises "
        "(b, d, N, L) tensors at each of its log2 L steps. The Numba form is what `train` uses on a CPU.", ""])
    print(text)
    if args.write:
        write_section(args.write, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
