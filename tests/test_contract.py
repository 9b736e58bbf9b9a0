import dataclasses

import cv2
import numpy as np
import pytest

from m2s2l_deploy.contract import (
    InputContract,
    letterbox_geometry,
    prepare_frames,
    resample_indices,
    sliding_clips,
)
from m2s2l_deploy.errors import DataError, UserError


def test_contract_roundtrip_and_unknown_keys():
    c = InputContract(height=32, width=48, channels=3, resize="letterbox", fps=10, clip_len=4)
    d = c.to_dict()
    assert d == {"height": 32, "width": 48, "channels": 3, "resize": "letterbox", "fps": 10.0, "clip_len": 4}
    assert InputContract.from_dict({**d, "future_key": 1}) == c
    assert InputContract.from_dict({}) == InputContract()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.height = 1


@pytest.mark.parametrize(
    "bad",
    [
        {"channels": 2},
        {"resize": "crop"},
        {"height": 0},
        {"width": "64"},
        {"height": 12.5},
        {"fps": -1},
        {"fps": float("nan")},
        {"clip_len": 1},
        {"channels": True},
    ],
)
def test_contract_rejects_nonsense(bad):
    with pytest.raises(UserError):
        InputContract.from_dict(bad)


def test_contract_rejects_non_mapping():
    with pytest.raises(UserError):
        InputContract.from_dict([64, 64])


def test_prepare_gray_shapes_and_range():
    c = InputContract(height=16, width=20, channels=1)
    frames = np.zeros((3, 30, 40), np.uint8)
    frames[1] = 255
    frames[2] = np.arange(40, dtype=np.uint8)[None, :] * 6
    out = prepare_frames(frames, c)
    assert out.shape == (3, 1, 16, 20) and out.dtype == np.float32
    assert np.all(out[0] == -1.0) and np.all(out[1] == 1.0)
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert np.all(np.diff(out[2, 0, 0]) > 0)


def test_prepare_single_frames_and_upscaling():
    c = InputContract(height=64, width=64, channels=1)
    assert prepare_frames(np.full((8, 12), 255, np.uint8), c).shape == (1, 1, 64, 64)
    out = prepare_frames(np.full((8, 12, 3), 255, np.uint8), c)
    assert out.shape == (1, 1, 64, 64)
    assert np.allclose(out, 1.0)


def test_prepare_bgr_to_rgb_order():
    c = InputContract(height=8, width=8, channels=3)
    blue_bgr = np.zeros((2, 8, 8, 3), np.uint8)
    blue_bgr[..., 0] = 255
    out = prepare_frames(blue_bgr, c)
    assert out.shape == (2, 3, 8, 8)
    assert np.all(out[:, 2] == 1.0) and np.all(out[:, :2] == -1.0)


def test_prepare_bgr_to_gray_matches_opencv():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    out = prepare_frames(frame[None], InputContract(height=10, width=10, channels=1))
    expected = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(out[0, 0], expected, atol=1e-6)


def test_prepare_gray_to_rgb_replicates():
    frame = np.arange(64, dtype=np.uint8).reshape(1, 8, 8) * 3
    out = prepare_frames(frame, InputContract(height=8, width=8, channels=3))
    assert out.shape == (1, 3, 8, 8)
    assert np.array_equal(out[0, 0], out[0, 1]) and np.array_equal(out[0, 1], out[0, 2])


def test_prepare_rejects_bad_input():
    c = InputContract()
    with pytest.raises(DataError):
        prepare_frames(np.zeros((2, 8, 8), np.uint16), c)
    with pytest.raises(DataError):
        prepare_frames(np.zeros((2, 8, 8, 2), np.uint8), c)
    with pytest.raises(DataError):
        prepare_frames(np.zeros((8,), np.uint8), c)


def test_letterbox_geometry():
    assert letterbox_geometry((100, 200), (64, 64)) == (0.32, 16, 0, 32, 64)
    scale, top, left, nh, nw = letterbox_geometry((200, 100), (64, 64))
    assert (top, left, nh, nw) == (0, 16, 64, 32) and scale == pytest.approx(0.32)
    assert letterbox_geometry((64, 64), (64, 64)) == (1.0, 0, 0, 64, 64)
    scale, top, left, nh, nw = letterbox_geometry((480, 640), (256, 256))
    assert (top, left, nh, nw) == (32, 0, 192, 256)


def test_prepare_letterbox_pads_black():
    c = InputContract(height=64, width=64, channels=1, resize="letterbox")
    out = prepare_frames(np.full((100, 200), 255, np.uint8), c)[0, 0]
    assert np.all(out[:16] == -1.0) and np.all(out[48:] == -1.0)
    assert np.allclose(out[16:48], 1.0, atol=1e-5)
    tall = prepare_frames(np.full((200, 100, 3), 255, np.uint8), c)[0, 0]
    assert np.all(tall[:, :16] == -1.0) and np.all(tall[:, 48:] == -1.0)
    assert np.allclose(tall[:, 16:48], 1.0, atol=1e-5)
    stretched = prepare_frames(np.full((100, 200), 255, np.uint8), InputContract(height=64, width=64))
    assert np.allclose(stretched, 1.0, atol=1e-5)


def test_sliding_clips():
    clips = sliding_clips(7, 5)
    assert clips.tolist() == [[0, 1, 2, 3, 4], [1, 2, 3, 4, 5], [2, 3, 4, 5, 6]]
    assert sliding_clips(9, 5, stride=2)[:, -1].tolist() == [4, 6, 8]
    assert sliding_clips(4, 5).shape == (0, 5)
    assert sliding_clips(0, 3).shape == (0, 3)


def test_resample_indices():
    assert resample_indices(10, 30, 10).tolist() == [0, 3, 6, 9]
    assert resample_indices(30, 30.0, 10.0).tolist() == list(range(0, 30, 3))
    assert resample_indices(10, 10, 10).tolist() == list(range(10))
    assert resample_indices(10, 25, None).tolist() == list(range(10))
    assert resample_indices(0, 30, 10).tolist() == []
    down = resample_indices(101, 25, 10)
    assert len(down) == 41 and np.all(np.diff(down) > 0) and down[-1] == 100
    up = resample_indices(5, 10, 20)
    assert len(up) == 9 and np.all(np.diff(up) >= 0) and up[0] == 0 and up[-1] == 4
    assert np.bincount(up).max() <= 2 and set(up.tolist()) == set(range(5))
    with pytest.raises(DataError):
        resample_indices(10, 0.0, 10)
