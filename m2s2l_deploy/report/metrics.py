"""Frame- and pixel-level evaluation metrics, plus the frame-difference baseline.

Why: every evaluation path (CLI, benchmarks, tests) must compute AUCs the same way as the
published protocols (docs/evaluation.md): scikit-learn ROC AUC, micro over all frames, macro over
videos that contain both classes, with skipped videos reported rather than silently dropped.
Normalisation (per-video min-max or causal) is the caller's choice; these functions take scores
as given.
"""

from __future__ import annotations

from typing import Mapping

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import roc_auc_score

from ..errors import DataError


def minmax_per_video(scores: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min) over one video; a constant video maps to zeros (no evidence)."""
    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        return x.astype(np.float32)
    lo, hi = float(np.min(x)), float(np.max(x))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise DataError("scores contain NaN or infinite values")
    if hi - lo <= 0:
        return np.zeros_like(x, dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def smooth_scores(scores: np.ndarray, sigma: float) -> np.ndarray:
    """Temporal Gaussian smoothing (peers use sigma 10-20 frames); sigma <= 0 returns a copy."""
    x = np.asarray(scores, dtype=np.float64)
    if sigma <= 0 or x.size == 0:
        return x.astype(np.float32, copy=True)
    return gaussian_filter1d(x, float(sigma), mode="nearest").astype(np.float32)


def _checked(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]):
    """Pair up scores and labels per video; mismatches are data errors, not silent truncation."""
    pairs = {}
    for vid, lab in labels.items():
        if vid not in scores:
            raise DataError(f"no scores for labelled video {vid!r}")
        s = np.asarray(scores[vid], dtype=np.float64).reshape(-1)
        y = np.asarray(lab).reshape(-1)
        if s.shape != y.shape:
            raise DataError(f"video {vid!r}: {s.size} scores but {y.size} labels")
        if not np.all(np.isfinite(s)):
            raise DataError(f"video {vid!r}: scores contain NaN or infinite values")
        if y.size and not np.all(np.isin(y, (0, 1))):
            raise DataError(f"video {vid!r}: labels must be 0/1")
        pairs[vid] = (s, y.astype(np.int64))
    return pairs


def frame_auc(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> dict:
    """Frame-level ROC AUC, micro (all frames concatenated) and macro (mean over videos).

    Videos whose labels hold a single class have no per-video AUC; they still count in micro and
    are listed in ``skipped_single_class``. Videos in ``scores`` without labels are ignored.
    """
    pairs = _checked(scores, labels)
    per_video: dict[str, dict] = {}
    skipped: list[str] = []
    aucs: list[float] = []
    for vid, (s, y) in pairs.items():
        n_anom = int(y.sum())
        auc = None
        if 0 < n_anom < y.size:
            auc = float(roc_auc_score(y, s))
            aucs.append(auc)
        else:
            skipped.append(vid)
        per_video[vid] = {"auc": auc, "n_frames": int(y.size), "n_anomalous": n_anom}
    if pairs:
        all_s = np.concatenate([s for s, _ in pairs.values()])
        all_y = np.concatenate([y for _, y in pairs.values()])
    else:
        all_s = all_y = np.zeros(0)
    micro = None
    if 0 < all_y.sum() < all_y.size:
        micro = float(roc_auc_score(all_y, all_s))
    return {
        "auc_micro": micro,
        "auc_macro": float(np.mean(aucs)) if aucs else None,
        "per_video": per_video,
        "skipped_single_class": skipped,
        "n_frames": int(all_y.size),
    }


def pixel_auc(score_maps: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
              max_pixels: int = 2_000_000, seed: int = 0) -> float | None:
    """Pixel-level ROC AUC over a deterministic random subsample of at most ~max_pixels pixels.

    Why subsample: a full Ped2 test set has ~2e8 pixels, too many for roc_auc_score in memory.
    Maps (N, h, w) are resized bilinearly to the mask size (N, H, W) when they differ. Returns None
    when the sampled pixels hold a single class.
    """
    vids = [v for v in masks]
    for v in vids:
        if v not in score_maps:
            raise DataError(f"no score maps for video {v!r}")
    total = 0
    for v in vids:
        m, s = np.asarray(masks[v]), np.asarray(score_maps[v])
        if m.ndim != 3 or s.ndim != 3 or m.shape[0] != s.shape[0]:
            raise DataError(f"video {v!r}: score maps {s.shape} do not match masks {m.shape}")
        total += m.size
    if total == 0:
        return None
    frac = min(1.0, max_pixels / total)
    rng = np.random.default_rng(seed)
    ys, ss = [], []
    for v in vids:
        m, s = np.asarray(masks[v]), np.asarray(score_maps[v], dtype=np.float32)
        n, h, w = m.shape
        for t in range(n):
            st = s[t]
            if st.shape != (h, w):
                st = cv2.resize(st, (w, h), interpolation=cv2.INTER_LINEAR)
            keep = rng.random(h * w) < frac if frac < 1.0 else slice(None)
            ys.append((m[t].reshape(-1)[keep] > 0).astype(np.uint8))
            ss.append(st.reshape(-1)[keep])
    y, s = np.concatenate(ys), np.concatenate(ss)
    if not np.all(np.isfinite(s)):
        raise DataError("score maps contain NaN or infinite values")
    if y.size == 0 or y.min() == y.max():
        return None
    return float(roc_auc_score(y, s))


def frame_difference_scores(frames: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Baseline anomaly score: mean absolute difference to the previous frame (float32).

    Frames are (N, H, W) or (N, H, W, C). The first frame has no predecessor and takes the
    second frame's value. Higher = more motion = "more anomalous"; it measures how far plain
    motion energy gets, which any learned model must beat.
    """
    f = np.asarray(frames)
    if f.ndim not in (3, 4):
        raise DataError(f"frames must be (N,H,W) or (N,H,W,C), got shape {f.shape}")
    n = f.shape[0]
    out = np.zeros(n, np.float32)
    if n < 2:
        return out
    for a in range(1, n, chunk):  # chunked: a long colour video would not fit as one float array
        b = min(n, a + chunk)
        cur = f[a:b].astype(np.float32)
        prev = f[a - 1:b - 1].astype(np.float32)
        out[a:b] = np.abs(cur - prev).reshape(b - a, -1).mean(axis=1)
    out[0] = out[1]
    return out


def psnr(mse, peak: float = 2.0):
    """PSNR in dB for frames scaled to [-1, 1] (peak-to-peak 2); mse is clamped away from zero."""
    m = np.maximum(np.asarray(mse, dtype=np.float64), 1e-10)
    return 10.0 * np.log10(peak**2 / m)
