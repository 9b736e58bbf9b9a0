"""The real-footage development set: test videos from the head, training from the tail, never mixed."""

import numpy as np
import pytest
from cli_helpers import load_benchmark

from m2s2l_deploy.data import open_dataset


@pytest.fixture(scope="module")
def vtest_dev():
    return load_benchmark("vtest_dev")


def test_head_is_tested_and_tail_is_trained(vtest_dev, tmp_path):
    rng = np.random.default_rng(3)
    n = vtest_dev.TEST_HEAD + 180
    frames = rng.integers(0, 256, size=(n, 72, 96, 3), dtype=np.uint8)
    frames[:, 0, 0, 0] = np.arange(n) % 256            # the source frame, read back below
    frames[:, 0, 0, 1] = np.arange(n) // 256
    summary = vtest_dev.build_dataset(frames, tmp_path, 10.0)
    ds = open_dataset(tmp_path)

    def sources(video):
        f = video.load()                                # the layout keeps OpenCV's BGR order
        return f[:, 0, 0, 1].astype(int) * 256 + f[:, 0, 0, 0]

    assert len(ds.train) == 3 and len(ds.test) == 2 * len(vtest_dev.EVENTS)
    trained = np.concatenate([sources(v) for v in ds.train])
    # training footage is exactly the tail, in order
    np.testing.assert_array_equal(trained, np.arange(vtest_dev.TEST_HEAD, n))
    for video, e in zip(ds.test, summary["testing"]):
        src = sources(video)
        assert src.max() < vtest_dev.TEST_HEAD                       # cut from the head only
        assert int(video.labels.sum()) == e["anomalous"] > 0
    assert [(e["event"], e["strength"]) for e in summary["testing"]] == \
        [(k, s) for s in ("standard", "subtle") for k in vtest_dev.EVENTS]


def test_too_short_footage_is_refused_before_anything_is_written(vtest_dev, tmp_path):
    from m2s2l_deploy.errors import DataError

    frames = np.zeros((vtest_dev.TEST_HEAD + vtest_dev.MIN_TRAINING - 1, 72, 96, 3), np.uint8)
    with pytest.raises(DataError, match="at least"):
        vtest_dev.build_dataset(frames, tmp_path / "data", 10.0)
    assert not (tmp_path / "data").exists()
