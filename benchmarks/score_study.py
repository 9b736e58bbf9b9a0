"""Re-score trained models with other score settings, on development data: how the background
component's noise floor and the fusion temperature were chosen (docs/results.md).

The score is not part of the training loss, so a trained model's per-frame components can be
recombined under any floor and temperature without retraining. For each (checkpoint, labelled
data) pair this computes the components once per lighting shift (grey levels added to the test
videos only, as when the light changes after training; the held-out calibration video stays as
it is), recalibrates each setting on that held-out video as `train` does, and prints micro /
macro AUC (paper protocol) and causal micro AUC per setting, the mean over pairs.

``--spreads S``: each component's standard deviation is also widened to sqrt(std^2 + (S * b)^2),
where b is the standard deviation of its per-video means over the training videos and the
held-out one (every 4th clip of a training video); 0 is the held-out video's spread alone, as
`train` calibrates. Why: a component's level moves between videos (other light, other crowds) by
more than it moves within the one held-out video, and a component whose level moves most should
weigh least when videos are compared. Not in `train`: it passed the development sets and lost
0.04 micro AUC on UCSD Ped2 (docs/results.md).

    python benchmarks/score_study.py --pair RUN_A DEV_A --pair RUN_B DEV_B --shifts 0 3 -3 \\
        --floors 0 2 4 6 --taus 0.5 4 --spreads 0 1 --json runs/score-study.json

Use it on development sets only (benchmarks/ped2_dev.py, synthetic scenes of development seeds):
a setting picked on a report set is not evidence.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
from m2s2l_deploy.contract import prepare_frames, sliding_clips  # noqa: E402
from m2s2l_deploy.data import open_dataset  # noqa: E402
from m2s2l_deploy.errors import UserError  # noqa: E402
from m2s2l_deploy.files import atomic_write_json, output_path  # noqa: E402
from m2s2l_deploy.jobs.train import load_training_data  # noqa: E402
from m2s2l_deploy.model import M2S2L, scoring  # noqa: E402
from m2s2l_deploy.model.checkpoint import load_checkpoint  # noqa: E402
from m2s2l_deploy.report import metrics  # noqa: E402


SPREAD_CLIP_STRIDE = 4      # every 4th clip of a training video estimates its mean components


@torch.no_grad()
def clip_components(model: M2S2L, frames: np.ndarray, floors: list[float], every: int = 1,
                    batch: int = 32) -> np.ndarray:
    """(clips, K - 1 + len(floors)), one row per ``every``-th clip: the model's components but the
    background one, then the background component at each floor (grey levels)."""
    rows = []
    idx = sliding_clips(len(frames), model.cfg.clip_len)[::every]
    for s in range(0, len(idx), batch):
        clip = torch.from_numpy(frames[idx[s:s + batch]])
        learned = model.outputs(clip)["components"][:, :-1]
        bg = [model.background_component(clip, floor=f / 127.5) for f in floors]
        rows.append(torch.cat([learned, torch.stack(bg, dim=1)], dim=1).numpy())
    return np.concatenate(rows)


def components(model: M2S2L, frames: np.ndarray, floors: list[float]) -> np.ndarray:
    """(N, K - 1 + len(floors)) per frame: ``clip_components`` of every clip, the first clip's values
    filling its first frames, as `evaluate` does."""
    out = clip_components(model, frames, floors)
    return np.concatenate([np.repeat(out[:1], model.cfg.clip_len - 1, axis=0), out])


def pair_components(run: Path, data: Path, shifts: list[float], floors: list[float],
                    between: bool = False) -> dict:
    """The per-frame components of one model on its held-out video and on ``data``'s labelled test
    videos under each shift; with ``between``, also the per-video mean components of its training
    videos and held-out video (K x videos, for the between-video spread)."""
    ck = load_checkpoint(run)
    cfg = dataclasses.replace(ck.model_config, score_background=True)
    model = M2S2L(cfg)
    model.load_state_dict({k: v for k, v in ck.state.items() if k not in ("score_mean", "score_std", "score_weights")},
                          strict=False)
    model.eval()
    train = ck.info.get("training", {})
    if "data_root" not in train or not Path(train["data_root"]).exists():
        raise UserError(f"{run}: its training footage ({train.get('data_root')}) is needed for the held-out video")
    kw = {k: v for k, v in ck.contract.to_dict().items() if k not in ("height", "width", "channels", "fps")}
    cal_data, contract = load_training_data(train["data_root"], train["layout"], kw, cfg.preset,
                                            str(ck.contract.channels), log=lambda _: None)
    tests = [v for v in open_dataset(data, "auto").test if v.labels is not None]
    if not tests:
        raise UserError(f"{data} has no labelled test videos")
    held_out = np.concatenate([clip_components(model, f, floors) for _, f in cal_data.calibration])
    video_means = None
    if between:
        video_means = np.stack([clip_components(model, f, floors, SPREAD_CLIP_STRIDE).mean(0) for f in cal_data.frames]
                               + [held_out.mean(0)])
    test = {shift: {} for shift in shifts}
    for v in tests:                          # each video read once, shifted as often as asked
        raw = v.load()
        for shift in shifts:
            shifted = np.clip(raw.astype(np.float32) + shift, 0, 255).astype(np.uint8) if shift else raw
            test[shift][v.name] = (components(model, prepare_frames(shifted, contract), floors), np.asarray(v.labels))
    return {"held_out": held_out, "test": test, "video_means": video_means}


def aucs(comps: dict, held_out: np.ndarray, columns: list[int], tau: float, spread: float = 0.0,
         video_means: np.ndarray | None = None) -> dict:
    """Recalibrate on the held-out video (mean, std per component; the std widened by ``spread``
    times the spread of ``video_means``) and fuse at ``tau``."""
    mean, std = held_out[:, columns].mean(0), np.maximum(held_out[:, columns].std(0, ddof=1), 1e-3)
    if spread:
        std = np.sqrt(std ** 2 + (spread * video_means[:, columns].std(0, ddof=1)) ** 2)
    w = torch.ones(len(columns), dtype=torch.float64)
    causal = {n: scoring.combine(torch.from_numpy(c[:, columns]).double(), torch.from_numpy(mean),
                                 torch.from_numpy(std), w, tau).numpy() for n, (c, _) in comps.items()}
    labels = {n: lab for n, (_, lab) in comps.items()}
    paper = metrics.frame_auc({n: metrics.minmax_per_video(s) for n, s in causal.items()}, labels)
    return {"auc_micro": paper["auc_micro"], "auc_macro": paper["auc_macro"],
            "auc_micro_causal": metrics.frame_auc(causal, labels)["auc_micro"]}


def study(pairs: list[tuple[Path, Path]], shifts: list[float], floors: list[float], taus: list[float],
          spreads: tuple[float, ...] = (0.0,)) -> dict:
    """{setting: {shift: mean AUCs over the pairs, and "pairs": each pair's}} with setting
    "floor F, tau T" (and ", spread S" where S is not 0)."""
    per_pair = [pair_components(r, d, shifts, floors, between=any(spreads)) for r, d in pairs]
    results = {}
    for fi, floor in enumerate(floors):
        for tau in taus:
            for spread in spreads:
                row = {}
                for shift in shifts:
                    each = []
                    for p in per_pair:     # models may differ in their learned components (no speed head)
                        n_learned = p["held_out"].shape[1] - len(floors)
                        each.append(aucs(p["test"][shift], p["held_out"], list(range(n_learned)) + [n_learned + fi],
                                         tau, spread, p["video_means"]))
                    row[f"{shift:+g}"] = {k: float(np.mean([e[k] for e in each])) for k in each[0]}
                    row[f"{shift:+g}"]["pairs"] = each
                results[f"floor {floor:g}, tau {tau:g}" + (f", spread {spread:g}" if spread else "")] = row
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", nargs=2, action="append", metavar=("RUN", "DATA"), required=True,
                    help="a trained checkpoint and labelled development data (repeat for more)")
    ap.add_argument("--shifts", type=float, nargs="+", default=[0.0], help="grey levels added to the test videos")
    ap.add_argument("--floors", type=float, nargs="+", default=[0.0, 4.0], help="background floors, grey levels")
    ap.add_argument("--taus", type=float, nargs="+", default=[0.5, 4.0], help="fusion temperatures")
    ap.add_argument("--spreads", type=float, nargs="+", default=[0.0],
                    help="multiples of the between-video spread added to each component's std (0: none)")
    ap.add_argument("--json", type=Path, help="write the table as JSON")
    args = ap.parse_args(argv)
    try:
        if any(t <= 0 for t in args.taus) or any(f < 0 for f in args.floors) or any(s < 0 for s in args.spreads):
            raise UserError("--taus must be > 0, --floors and --spreads >= 0")
        output_path(args.json, "--json", (".json",))      # refused before the slow work
        results = study([(Path(r), Path(d)) for r, d in args.pair], args.shifts, args.floors, args.taus,
                        tuple(args.spreads))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    shifts = list(next(iter(results.values())))
    print("| setting | " + " | ".join(f"shift {s}: micro / macro (causal)" for s in shifts) + " |")
    print("| --- |" + " --- |" * len(shifts))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{r['auc_micro']:.3f} / {r['auc_macro']:.3f} ({r['auc_micro_causal']:.3f})"
                                       for r in row.values()) + " |")
    if args.json:
        try:
            atomic_write_json(args.json, {"pairs": args.pair, "results": results})
        except OSError as e:
            print(f"error: cannot write {args.json}: {e.strerror}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
