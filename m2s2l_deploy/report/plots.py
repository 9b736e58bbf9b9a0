"""Score plots: one PNG per labelled test video (``evaluate --plots``) and one per bench run.

Both draw what a reader needs to judge a score curve: the frames without a full clip of
history, labelled anomalies when known, and for bench the alert threshold and the events raised.
PNGs are written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes
from .outputs import write_guarded


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_video_scores(results: dict, labels: dict, out_dir: Path) -> list[str]:
    """One PNG per video: paper-protocol score over frames, labelled anomalies shaded.

    ``results``: video name -> ``jobs.clip_loop.VideoScores``."""
    from . import metrics      # scikit-learn: evaluate's dependency, not bench's (bench runs on an ONNX-only box)

    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, vs in results.items():
        fig, ax = plt.subplots(figsize=(8, 2.6))
        score = metrics.minmax_per_video(vs.frame_score)
        ax.plot(score, lw=1.2, label="anomaly score (per-video min-max)")
        lab = np.asarray(labels[name]).astype(bool)
        ax.fill_between(np.arange(len(lab)), 0, 1, where=lab, color="tab:red", alpha=0.2, step="mid",
                        label="labelled anomaly")
        ax.axvspan(-0.5, vs.first_decidable - 0.5, color="0.85", label="no full history")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0, len(lab) - 1)
        ax.set_xlabel("frame")
        ax.set_title(name, fontsize=9)
        ax.legend(loc="upper right", fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{name.replace('/', '_')}.png"
        atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
        plt.close(fig)
        written.append(str(path))
    return written


def plot_bench_scores(path: Path, result, labels: np.ndarray | None = None, title: str | None = None) -> None:
    """Score curve with the threshold, alert events, frames without full history and optional labels.

    ``result``: a ``jobs.bench.BenchResult``."""
    plt = _pyplot()

    n = len(result.scores)
    x = np.arange(n)
    fig, ax = plt.subplots(figsize=(9, 2.8))
    lo, hi = float(np.min(result.scores)), float(np.max(result.scores))
    if result.threshold is not None:
        lo, hi = min(lo, result.threshold), max(hi, result.threshold)
    pad = 0.05 * (hi - lo or 1.0)
    if labels is not None:
        lab = np.asarray(labels[:n]).astype(bool)
        ax.fill_between(np.arange(len(lab)), lo - pad, hi + pad, where=lab, step="mid", color="tab:orange",
                        alpha=0.25, label="labelled anomaly")
    for i, ev in enumerate(result.alerts):
        ax.axvspan(ev.start_frame - 0.5, ev.end_frame + 0.5, color="tab:red", alpha=0.18,
                   label="alert" if i == 0 else None)
    undecided = ~result.decidable
    if undecided.any():
        ax.axvspan(-0.5, int(np.nonzero(undecided)[0][-1]) + 0.5, color="0.8", label="no full history")
    ax.plot(x, result.scores, lw=1.1, color="tab:blue", label="anomaly score (causal)")
    if result.threshold is not None:
        ax.axhline(result.threshold, color="tab:red", lw=0.9, ls="--", label=f"threshold {result.threshold:.2f}")
    ax.set_xlim(-0.5, max(n - 0.5, 0.5))
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(f"frame (at {result.fps:g} fps)" if result.fps else "frame")
    ax.set_ylabel("score (normal-footage SDs)", fontsize=8)
    ax.set_title(title or Path(result.video).name, fontsize=9)
    ax.legend(loc="upper right", fontsize=7, ncol=3)
    fig.tight_layout()
    try:
        write_guarded(path, "plot", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
