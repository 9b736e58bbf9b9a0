"""Frame-level evaluation on a labelled test set, under both score protocols (docs/evaluation.md).

- paper protocol: per-video min-max of the frame score (needs the whole video), keys
  ``auc_micro`` / ``auc_macro``; optionally temporally smoothed (reported separately).
- causal protocol: the frame score as the model emits it, already standardised by statistics of
  held-out normal training footage; no future frame is used. Keys ``auc_micro_causal`` /
  ``auc_macro_causal``.
- baseline: mean absolute frame difference, paper protocol, on the same frames.
Frames before the first full clip carry the first decidable frame's score (``n_filled_frames``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..contract import prepare_frames
from ..data import open_dataset
from ..errors import UserError
from ..report import metrics
from ..report.plots import plot_video_scores
from .clip_loop import VideoScores, score_prepared


def _ablation(per_video: dict[str, VideoScores], labels: dict, mean, std, names=None, tau=None) -> dict:
    """AUCs (paper protocol) of each score variant, from the runner's per-frame components.

    The variants recombine the components with the model's own score function (torch: only a
    runner that returns components, the PyTorch one, gets here)."""
    import torch

    from ..model import scoring

    out = {}
    tau = scoring.SOFT_MAX_TAU if tau is None else tau
    mean, std = torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(std, dtype=torch.float64)
    for name, weights in scoring.ablations(names or len(mean)).items():
        w = torch.tensor(weights, dtype=torch.float64)
        scores = {v: metrics.minmax_per_video(
            scoring.combine(torch.from_numpy(s.components).double(), mean, std, w, tau).numpy())
            for v, s in per_video.items()}
        r = metrics.frame_auc(scores, labels)
        out[name] = {"auc_micro": r["auc_micro"], "auc_macro": r["auc_macro"]}
    return out


def evaluate(runner, data_root, layout: str = "auto", batch: int = 16, smooth_sigma: float = 0.0,
             plots_dir: Path | None = None, progress_factory: Callable | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Score every labelled test video with ``runner`` and compute the AUC report."""
    dataset = open_dataset(data_root, layout)
    tests = [v for v in dataset.test if v.labels is not None]
    if not tests:
        raise UserError(f"{data_root} ({dataset.layout} layout) has no labelled test videos to evaluate on")
    contract = runner.contract
    if dataset.fps and contract.fps and abs(dataset.fps - contract.fps) > 0.01:
        log(f"warning: test footage is {dataset.fps:g} fps but the model was trained at {contract.fps:g} fps")
    results: dict[str, VideoScores] = {}
    labels, baseline, masks = {}, {}, {}
    total = sum(len(v.labels) - contract.clip_len + 1 for v in tests)
    advance = progress_factory(total) if progress_factory else None
    t0 = time.perf_counter()
    infer_s = 0.0
    for video in tests:
        raw = video.load()
        prepared = prepare_frames(raw, contract)
        vs = score_prepared(runner, prepared, name=video.name, batch=batch,
                            want_maps=video.pixel_masks is not None, progress=advance)
        infer_s += vs.seconds
        results[video.name] = vs
        labels[video.name] = video.labels
        baseline[video.name] = metrics.minmax_per_video(metrics.frame_difference_scores(raw))
        if video.pixel_masks is not None:
            masks[video.name] = video.pixel_masks()
    wall = time.perf_counter() - t0

    causal = {v: s.frame_score for v, s in results.items()}
    paper = {v: metrics.minmax_per_video(s) for v, s in causal.items()}
    r_paper = metrics.frame_auc(paper, labels)
    r_causal = metrics.frame_auc(causal, labels)
    r_base = metrics.frame_auc(baseline, labels)
    report = {
        "auc_micro": r_paper["auc_micro"], "auc_macro": r_paper["auc_macro"],
        "auc_micro_causal": r_causal["auc_micro"], "auc_macro_causal": r_causal["auc_macro"],
        "baseline_auc_micro": r_base["auc_micro"], "baseline_auc_macro": r_base["auc_macro"],
        "n_frames": r_paper["n_frames"], "n_videos": len(results),
        "n_filled_frames": int(sum(s.first_decidable for s in results.values())),
        "skipped_single_class": r_paper["skipped_single_class"],
        "per_video": {v: {**r_paper["per_video"][v], "auc_causal": r_causal["per_video"][v]["auc"],
                          "baseline_auc": r_base["per_video"][v]["auc"]} for v in results},
        "dataset": {"root": str(Path(data_root).resolve()), "layout": dataset.layout},
        "runner": runner.name,
        "timing": {"wall_s": round(wall, 2), "infer_s": round(infer_s, 2),
                   "ms_per_frame": round(1000 * infer_s / max(1, total), 3)},
        "protocols": {"paper": "per-video min-max of the frame score",
                      "causal": "frame score standardised by held-out normal training footage, no future frames",
                      "first_frames": f"the first {contract.clip_len - 1} frames of each video take the first decidable score"},
    }
    if smooth_sigma > 0:
        sm = {v: metrics.minmax_per_video(metrics.smooth_scores(s, smooth_sigma)) for v, s in causal.items()}
        r_sm = metrics.frame_auc(sm, labels)
        report["smoothed"] = {"sigma": smooth_sigma, "auc_micro": r_sm["auc_micro"], "auc_macro": r_sm["auc_macro"]}
    if masks:
        maps = {v: results[v].score_maps.astype(np.float32) for v in masks}
        report["auc_pixel"] = metrics.pixel_auc(maps, masks)
    if all(s.components is not None for s in results.values()) and runner.component_stats is not None:
        report["ablation"] = _ablation(results, labels, *runner.component_stats, runner.component_names,
                                       runner.score_tau)
    if plots_dir is not None:
        report["plots"] = plot_video_scores(results, labels, Path(plots_dir))
    return report


def evaluate_checkpoint(checkpoint, data_root, layout: str = "auto", batch: int = 16, smooth_sigma: float = 0.0,
                        plots_dir: Path | None = None, runner=None, device: str = "cpu",
                        progress_factory: Callable | None = None, log: Callable[[str], None] = print) -> dict:
    """``evaluate`` with the checkpoint's PyTorch runner (components included, for the ablation)
    unless another ``runner`` is given; the report records the checkpoint."""
    if runner is None:
        from ..runners.torch_runner import TorchRunner
        runner = TorchRunner(checkpoint, device=device, extras=True)
    report = evaluate(runner, data_root, layout=layout, batch=batch, smooth_sigma=smooth_sigma, plots_dir=plots_dir,
                      progress_factory=progress_factory, log=log)
    report["checkpoint"] = str(checkpoint)
    return report
