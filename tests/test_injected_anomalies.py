"""The real-footage benchmark's injected events: labels agree with what was drawn into the frames."""

import numpy as np
import pytest
from cli_helpers import load_benchmark


@pytest.fixture(scope="module")
def injected():
    return load_benchmark("injected_anomalies")


@pytest.fixture(scope="module")
def footage():
    """Noise frames whose pixel (0, 0) counts frames, so a frame's source index can be read back."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(120, 72, 96, 3), dtype=np.uint8)
    frames[:, 0, 0, 0] = np.arange(len(frames))
    return frames


@pytest.mark.parametrize("strength,factor", [("standard", 3), ("subtle", 2)])
def test_speedup_labels_the_frames_that_skip_source_frames(injected, footage, strength, factor):
    n = injected.source_frames("speedup", strength)
    video, labels = injected.inject("speedup", footage[:n], np.random.default_rng(0), strength)
    index = video[:, 0, 0, 0].astype(int)
    step = np.diff(index, prepend=index[0] - 1)
    np.testing.assert_array_equal(labels, (step > 1).astype(np.uint8))   # skipped source frames <=> labelled
    assert labels.sum() == injected.EVENT_LEN and set(step[step > 1]) == {factor}
    assert index[-1] == n - 1                                             # every source frame it asked for is reached


def test_subtle_objects_are_smaller_or_slower(injected, footage):
    """The subtle strength draws a smaller crate and cart and a slower rider than the benchmark's."""
    def drawn(kind, strength):
        video, labels = injected.inject(kind, footage[:70], np.random.default_rng(0), strength)
        changed = (video != footage[:70]).any(axis=-1).reshape(70, -1).sum(axis=1)
        return changed.max(), int(labels.sum())
    for kind in ("static_object", "large_object"):
        assert drawn(kind, "subtle")[0] < 0.5 * drawn(kind, "standard")[0]      # a smaller area
    # the same rider, slower: on screen for more frames
    assert drawn("fast_object", "subtle")[1] > 2 * drawn("fast_object", "standard")[1]


@pytest.mark.parametrize("kind", ["static_object", "fast_object", "large_object"])
def test_object_events_are_labelled_where_the_object_is_drawn(injected, footage, kind):
    src = footage[:70]
    video, labels = injected.inject(kind, src, np.random.default_rng(0))
    assert video.shape == src.shape and not np.shares_memory(video, src)
    changed = (video != src).any(axis=-1).reshape(len(src), -1).sum(axis=1)   # pixels drawn per frame
    assert changed[:injected.EVENT_START].sum() == 0                            # nothing before the event
    assert labels.sum() > 0 and (changed[labels == 1] > 0).all()
    # a frame is labelled once a fifth of the object's largest drawn area is in view (noise makes a
    # drawn pixel equal to the source pixel with odds 1/256^3, so changed pixels measure the area)
    np.testing.assert_array_equal(labels, (changed >= 0.2 * changed.max()).astype(np.uint8))


def test_dataset_layout_is_read_by_the_toolkit(injected, tmp_path):
    from m2s2l_deploy.data import open_dataset
    rng = np.random.default_rng(2)
    n = sum(injected.TEST_SOURCE.values()) + 160
    summary = injected.build_dataset(rng.integers(0, 256, (n, 48, 64, 3), dtype=np.uint8), tmp_path, 10.0)
    ds = open_dataset(tmp_path)
    assert [e["event"] for e in summary["testing"]] == list(injected.TEST_SOURCE)
    assert len(ds.test) == 4 and sum(len(v.load()) for v in ds.train) == 160
    for v, e in zip(ds.test, summary["testing"]):
        assert len(v.labels) == e["frames"] and int(v.labels.sum()) == e["anomalous"]


def _walkway(n=70, h=96, w=128, x0=10):
    """A plain grey scene with one dark upright 'walker' (18 x 6 pixels, a lighter head) walking
    right at 1 px/frame."""
    frames = np.full((n, h, w, 3), 120, np.uint8)
    for i in range(n):
        frames[i, 40:58, x0 + i:x0 + i + 6] = 30
        frames[i, 40:43, x0 + i + 1:x0 + i + 5] = 200
    return frames


@pytest.mark.parametrize("strength", ["standard", "subtle"])
def test_glider_is_a_walker_of_the_footage_moving_too_fast(injected, strength):
    """The development sets' glider: the footage's own walker, cut out and moved across at its own
    height at the strength's speed; labelled once a fifth of it is in view."""
    src = _walkway()
    video, labels = injected.inject("glider", src, np.random.default_rng(0), strength)
    speed = injected.STRENGTHS[strength]["glider_speed"]
    drawn = np.abs(video.astype(int) - src.astype(int)).max(axis=-1) > 0
    assert not drawn[:injected.EVENT_START].any() and labels[:injected.EVENT_START].sum() == 0
    cols = [np.nonzero(drawn[i].any(axis=0))[0] for i in range(len(src))]
    rows = np.nonzero(drawn.any(axis=(0, 2)))[0]
    assert rows.min() >= 40 and rows.max() <= 57                       # at the walker's own height
    # fully in view and away from the real walker: the cut-out's pixels are the walker's
    seen = [i for i in range(len(src)) if len(cols[i]) and 0 < cols[i].min() and cols[i].max() < 127
            and abs(cols[i].mean() - (10 + i + 2.5)) > 12]
    assert len(seen) >= 5
    i = seen[len(seen) // 2]
    patch = video[i, 40:58][:, drawn[i, 40:58].any(axis=0)]
    assert set(np.unique(patch)) <= {30, 200, 120}
    step = [abs(cols[i + 1].mean() - cols[i].mean()) for i in seen if i + 1 in seen]   # next frames
    assert len(step) >= 3 and np.allclose(step, speed, atol=1.0)
    assert labels.sum() > 0 and (labels[injected.EVENT_START:] == (drawn[injected.EVENT_START:].sum(axis=(1, 2)) >=
                                                                    0.2 * 18 * 6 - 1e-9)).mean() > 0.9


def test_glider_needs_a_walker(injected):
    with pytest.raises(ValueError, match="no walker"):
        injected.inject("glider", np.full((70, 96, 128, 3), 120, np.uint8), np.random.default_rng(0))
