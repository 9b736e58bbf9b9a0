"""Synthetic scene generator: layout, labels, determinism, per-camera background, atomic writes."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from m2s2l_deploy.data.synth import (CLEAN, DEFAULT_EVENTS, EVENT_TYPES, _collect, background_frame,
                                     event_assignment, generate_scene, make_layout, plan_video, render,
                                     render_video_file)
from m2s2l_deploy.errors import UserError

SMALL = dict(size=(48, 64), n_train=1, n_test=2, train_frames=12, test_frames=40)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    generate_scene(out, seed=0, **SMALL)
    return out


def _frames(folder: Path) -> np.ndarray:
    files = sorted(folder.glob("*.png"))
    return np.stack([cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in files])


def test_layout_and_scene_json(small_set):
    meta = json.loads((small_set / "scene.json").read_text())
    assert meta["fps"] == 10 and meta["size"] == [48, 64] and meta["seed"] == 0
    assert meta["scene"] == 0 and meta["generator_version"] == 2
    train = _frames(small_set / "training" / "frames" / "01")
    assert train.shape == (12, 48, 64) and train.dtype == np.uint8  # 8-bit grayscale PNGs
    assert (small_set / "training" / "frames" / "01" / "0000.png").exists()
    assert meta["videos"]["training/01"]["split"] == "training"
    assert meta["videos"]["training/01"]["events"] == []
    for vid in ("01", "02"):
        info = meta["videos"][f"testing/{vid}"]
        assert info["split"] == "testing" and info["name"] == vid and info["n_frames"] == 40
        assert _frames(small_set / "testing" / "frames" / vid).shape == (40, 48, 64)
    assert not list(small_set.parent.glob(".set.tmp-*"))  # temp folder renamed away


def test_labels_and_pixel_masks_agree(small_set):
    meta = json.loads((small_set / "scene.json").read_text())
    n_anomalous = 0
    for vid in ("01", "02"):
        labels = np.load(small_set / "testing" / "test_frame_mask" / f"{vid}.npy")
        with np.load(small_set / "testing" / "test_pixel_mask" / f"{vid}.npz") as z:
            masks = z["masks"]
        assert labels.dtype == np.uint8 and labels.shape == (40,)
        assert masks.dtype == np.uint8 and masks.shape == (40, 48, 64)
        assert set(np.unique(labels)) <= {0, 1} and set(np.unique(masks)) <= {0, 1}
        np.testing.assert_array_equal(labels, masks.reshape(40, -1).any(axis=1))
        # events in scene.json are the labelled runs (inclusive ends)
        info = meta["videos"][f"testing/{vid}"]
        from_events = np.zeros(40, np.uint8)
        for ev in info["events"]:
            assert ev["type"] == info["anomaly"]
            from_events[ev["start"]:ev["end"] + 1] = 1
        np.testing.assert_array_equal(from_events, labels)
        if info["anomaly"] != CLEAN:
            assert labels.sum() > 0
            n_anomalous += 1
    assert n_anomalous == 2  # with fewer test videos than types + 2, anomaly types come first


def _tree_bytes(root: Path) -> dict:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_deterministic_bytes(small_set, tmp_path):
    again = tmp_path / "again"
    generate_scene(again, seed=0, **SMALL)
    assert _tree_bytes(again) == _tree_bytes(small_set)
    other = tmp_path / "other"
    generate_scene(other, seed=1, **SMALL)
    assert _tree_bytes(other) != _tree_bytes(small_set)


def test_background_depends_on_scene_not_seed(small_set, tmp_path):
    bg0 = background_frame(make_layout(0, (48, 64))).astype(np.float32)
    np.testing.assert_array_equal(bg0, background_frame(make_layout(0, (48, 64))))
    bg1 = background_frame(make_layout(1, (48, 64))).astype(np.float32)
    assert np.abs(bg0 - bg1).mean() > 10  # another camera looks different

    # the temporal median of real footage is the background, whatever the seed
    other = tmp_path / "seed1"
    generate_scene(other, seed=1, **SMALL)
    med0 = np.median(_frames(small_set / "training" / "frames" / "01"), axis=0)
    med1 = np.median(_frames(other / "training" / "frames" / "01"), axis=0)
    assert np.abs(med0 - med1).mean() < 6
    assert np.abs(med0 - bg0).mean() < 6


def test_refuses_non_empty_output_and_accepts_empty(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        generate_scene(busy, **SMALL)
    assert (busy / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_scene(empty, n_test=0, size=(48, 64), n_train=1, train_frames=4)
    assert (empty / "scene.json").exists()


def test_interrupted_run_leaves_nothing(tmp_path):
    def boom(done, total):
        if done == 20:
            raise KeyboardInterrupt

    out = tmp_path / "half"
    with pytest.raises(KeyboardInterrupt):
        generate_scene(out, progress=boom, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_progress_counts_frames(tmp_path):
    seen = []
    generate_scene(tmp_path / "p", progress=lambda d, t: seen.append((d, t)), size=(48, 64),
                   n_train=1, n_test=1, train_frames=5, test_frames=6)
    assert seen[-1] == (11, 11) and len(seen) == 11


def test_event_assignment_covers_all_types():
    n = len(DEFAULT_EVENTS) + 2
    for seed in range(3):
        kinds = event_assignment(seed, 0, n)
        assert sorted(kinds) == sorted(list(DEFAULT_EVENTS) + [CLEAN, CLEAN])
    assert "wrong_way" not in DEFAULT_EVENTS and set(DEFAULT_EVENTS) < set(EVENT_TYPES)
    assert sorted(event_assignment(0, 0, 8, EVENT_TYPES)) == sorted(list(EVENT_TYPES) + [CLEAN, CLEAN])
    assert event_assignment(0, 0, n) != event_assignment(1, 0, n)  # varies with the seed
    assert CLEAN not in event_assignment(5, 0, len(DEFAULT_EVENTS))
    assert event_assignment(2, 0, 3) == event_assignment(2, 0, 3)
    with pytest.raises(UserError, match="unknown synthetic event"):
        event_assignment(0, 0, 3, ("cyclist", "dragon"))


def test_labels_start_once_a_fifth_of_the_object_is_in_view():
    """Frame labels follow the rule of _collect, recomputed here from the raw drawn masks."""
    layout = make_layout(0, (120, 160))
    checked_sliver = False
    for seed in range(4):
        plan = plan_video(layout, np.random.default_rng([seed, 7]), 120, ("cart",))
        raw = [m for _, m in render(layout, plan)]
        area = np.array([int(ms[0].sum()) for ms in raw])
        labels, pixel, _ = _collect(raw, (120, 160), 1)
        want = (area > 0) & (area >= 0.2 * area.max())
        np.testing.assert_array_equal(labels.astype(bool), want)
        np.testing.assert_array_equal(pixel.reshape(120, -1).any(1), want)
        checked_sliver |= bool(((area > 0) & ~want).any())   # a sliver at the border: not labelled
    assert checked_sliver


def test_bad_arguments(tmp_path):
    with pytest.raises(UserError):
        generate_scene(tmp_path / "a", size=(8, 8))
    with pytest.raises(UserError):
        generate_scene(tmp_path / "b", seed=-1, **SMALL)
    with pytest.raises(UserError):
        render_video_file(tmp_path / "c.mkv", seed=0, n_frames=5, size=(48, 64))
    with pytest.raises(UserError, match="unknown synthetic event"):
        render_video_file(tmp_path / "d.avi", seed=0, n_frames=5, events=("ufo",), size=(48, 64))


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_render_video_file(tmp_path, suffix):
    path = tmp_path / f"clip{suffix}"
    labels = render_video_file(path, seed=3, n_frames=30, events=("cyclist",), size=(48, 64))
    assert labels.shape == (30,) and labels.dtype == np.uint8 and labels.sum() > 0
    cap = cv2.VideoCapture(str(path))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape[:2] == (48, 64)
        n += 1
    cap.release()
    assert n == 30
    assert not list(tmp_path.glob(".*tmp*"))
    again = render_video_file(tmp_path / f"again{suffix}", seed=3, n_frames=30,
                              events=("cyclist",), size=(48, 64))
    np.testing.assert_array_equal(labels, again)
