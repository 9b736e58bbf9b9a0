"""Metrics agree with independent computations (sklearn directly, plain Python loops)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from m2s2l_deploy.errors import DataError
from m2s2l_deploy.report.metrics import (frame_auc, frame_difference_scores, minmax_per_video, pixel_auc,
                                  psnr, smooth_scores)


def _videos(seed=0):
    """Three labelled videos with a partly informative score, plus one all-normal video."""
    rng = np.random.default_rng(seed)
    scores, labels = {}, {}
    for i, n in enumerate((50, 80, 65)):
        y = np.zeros(n, np.uint8)
        a = int(rng.integers(5, n // 2))
        y[a:a + n // 3] = 1
        scores[f"v{i}"] = y * 0.8 + rng.normal(size=n)
        labels[f"v{i}"] = y
    labels["clean"] = np.zeros(40, np.uint8)
    scores["clean"] = rng.normal(size=40)
    return scores, labels


def test_frame_auc_matches_sklearn():
    scores, labels = _videos()
    res = frame_auc(scores, labels)
    vids = list(labels)
    micro = roc_auc_score(np.concatenate([labels[v] for v in vids]),
                          np.concatenate([scores[v] for v in vids]))
    per = [roc_auc_score(labels[v], scores[v]) for v in ("v0", "v1", "v2")]
    assert res["auc_micro"] == pytest.approx(micro)
    assert res["auc_macro"] == pytest.approx(np.mean(per))
    assert res["per_video"]["v1"]["auc"] == pytest.approx(per[1])
    assert res["n_frames"] == 50 + 80 + 65 + 40
    assert 0.5 < res["auc_micro"] < 1.0  # informative but imperfect scores


def test_frame_auc_skips_single_class_videos_in_macro_only():
    scores, labels = _videos()
    res = frame_auc(scores, labels)
    assert res["skipped_single_class"] == ["clean"]
    assert res["per_video"]["clean"] == {"auc": None, "n_frames": 40, "n_anomalous": 0}
    # the clean video still counts in micro: dropping it changes the value
    without = frame_auc({k: v for k, v in scores.items() if k != "clean"},
                        {k: v for k, v in labels.items() if k != "clean"})
    assert without["auc_macro"] == pytest.approx(res["auc_macro"])
    assert without["auc_micro"] != pytest.approx(res["auc_micro"])


def test_frame_auc_single_class_overall_and_extreme_cases():
    res = frame_auc({"a": np.arange(5.0)}, {"a": np.zeros(5, np.uint8)})
    assert res["auc_micro"] is None and res["auc_macro"] is None
    y = np.array([0, 0, 1, 1], np.uint8)
    assert frame_auc({"a": y * 1.0}, {"a": y})["auc_micro"] == 1.0
    assert frame_auc({"a": -y.astype(float)}, {"a": y})["auc_micro"] == 0.0
    assert frame_auc({"a": np.zeros(4)}, {"a": y})["auc_micro"] == 0.5  # ties


def test_frame_auc_rejects_bad_input():
    y = np.array([0, 1, 0], np.uint8)
    with pytest.raises(DataError, match="3 labels"):
        frame_auc({"a": np.zeros(2)}, {"a": y})
    with pytest.raises(DataError, match="no scores"):
        frame_auc({}, {"a": y})
    with pytest.raises(DataError, match="NaN"):
        frame_auc({"a": np.array([0.0, np.nan, 1.0])}, {"a": y})
    with pytest.raises(DataError, match="0/1"):
        frame_auc({"a": np.zeros(3)}, {"a": np.array([0, 2, 1])})


def test_minmax_per_video():
    out = minmax_per_video(np.array([2.0, 4.0, 3.0]))
    np.testing.assert_allclose(out, [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(minmax_per_video(np.full(4, 7.0)), np.zeros(4))
    assert minmax_per_video(np.array([])).size == 0
    np.testing.assert_array_equal(minmax_per_video(np.array([5.0])), [0.0])
    with pytest.raises(DataError):
        minmax_per_video(np.array([1.0, np.inf]))


def test_smooth_scores():
    x = np.array([0, 0, 0, 1, 0, 0, 0], np.float64)
    copy = smooth_scores(x, 0)
    np.testing.assert_array_equal(copy, x)
    assert copy is not x
    s = smooth_scores(x, 1.0)
    assert s.shape == x.shape and s[3] < 1.0 and s[3] == s.max()
    np.testing.assert_allclose(s[:3], s[4:][::-1], atol=1e-6)  # symmetric spread
    np.testing.assert_allclose(smooth_scores(np.full(9, 3.0), 4.0), 3.0, atol=1e-6)
    np.testing.assert_allclose(smooth_scores(np.arange(5.0), -1), np.arange(5.0))


def _blob_masks(rng, n=4, h=24, w=32):
    masks = np.zeros((n, h, w), np.uint8)
    for t in range(n):
        y, x = rng.integers(2, h - 10), rng.integers(2, w - 10)
        masks[t, y:y + 8, x:x + 8] = 1
    return masks


def test_pixel_auc_perfect_inverted_and_resized():
    rng = np.random.default_rng(1)
    masks = {"a": _blob_masks(rng), "b": _blob_masks(rng)}
    perfect = {k: m.astype(np.float32) for k, m in masks.items()}
    inverted = {k: -m.astype(np.float32) for k, m in masks.items()}
    assert pixel_auc(perfect, masks) == pytest.approx(1.0)
    assert pixel_auc(inverted, masks) == pytest.approx(0.0)
    # half-resolution maps are resized up; blobs are big enough to stay almost perfect
    half = {k: m[:, ::2, ::2].astype(np.float32) for k, m in masks.items()}
    assert pixel_auc(half, masks) > 0.95
    noise = {k: rng.random(m.shape).astype(np.float32) for k, m in masks.items()}
    assert abs(pixel_auc(noise, masks) - 0.5) < 0.1


def test_pixel_auc_subsampling_is_deterministic():
    rng = np.random.default_rng(2)
    masks = {"a": _blob_masks(rng, n=6)}
    maps = {"a": masks["a"] + rng.normal(0, 0.8, masks["a"].shape).astype(np.float32)}
    full = pixel_auc(maps, masks)
    sub1 = pixel_auc(maps, masks, max_pixels=2000, seed=3)
    sub2 = pixel_auc(maps, masks, max_pixels=2000, seed=3)
    assert sub1 == sub2
    assert abs(sub1 - full) < 0.05
    assert pixel_auc({"a": np.zeros((2, 4, 4))}, {"a": np.zeros((2, 4, 4), np.uint8)}) is None
    with pytest.raises(DataError):
        pixel_auc({"a": np.zeros((3, 4, 4))}, {"a": np.zeros((2, 4, 4), np.uint8)})


def _loop_frame_diff(frames):
    """Reference: plain Python loops over every pixel value."""
    n = len(frames)
    out = []
    for t in range(1, n):
        total, count = 0, 0
        for a, b in zip(np.asarray(frames[t]).ravel().tolist(),
                        np.asarray(frames[t - 1]).ravel().tolist()):
            total += abs(int(a) - int(b))
            count += 1
        out.append(total / count)
    return [out[0]] + out


def test_frame_difference_scores_matches_loops():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 3, 4), dtype=np.uint8)
    gray[2] = gray[1]  # no motion between frames 1 and 2
    gray[3, 0, 0] = 255
    gray[4] = 0  # a wrap-around trap for uint8 subtraction
    np.testing.assert_allclose(frame_difference_scores(gray), _loop_frame_diff(gray), rtol=1e-6)
    color = rng.integers(0, 256, (4, 2, 3, 3), dtype=np.uint8)
    np.testing.assert_allclose(frame_difference_scores(color), _loop_frame_diff(color), rtol=1e-6)
    # chunked path gives the same answer
    long = rng.integers(0, 256, (70, 2, 2), dtype=np.uint8)
    np.testing.assert_allclose(frame_difference_scores(long, chunk=8), _loop_frame_diff(long),
                               rtol=1e-6)
    s = frame_difference_scores(gray)
    assert s.dtype == np.float32 and s[2] == 0.0 and s[0] == s[1]


def test_frame_difference_scores_edge_cases():
    np.testing.assert_array_equal(frame_difference_scores(np.zeros((1, 4, 4), np.uint8)), [0.0])
    assert frame_difference_scores(np.zeros((0, 4, 4), np.uint8)).shape == (0,)
    with pytest.raises(DataError):
        frame_difference_scores(np.zeros((4, 4), np.uint8))


def test_psnr():
    assert psnr(0.04) == pytest.approx(20.0)
    assert psnr(1.0, peak=1.0) == pytest.approx(0.0)
    np.testing.assert_allclose(psnr(np.array([0.04, 0.4])), [20.0, 10.0])
    assert np.isfinite(psnr(0.0))
