"""The Ped2 development sets: built from training videos only, read by the toolkit, bad input refused."""

import numpy as np
import pytest
from cli_helpers import load_benchmark

from m2s2l_deploy.data import open_dataset
from m2s2l_deploy.errors import UserError


@pytest.fixture(scope="module")
def ped2_dev():
    return load_benchmark("ped2_dev")


def _videos(n_frames=180):
    """Sixteen gray 'training videos' whose pixel (0, 0) holds the video number."""
    rng = np.random.default_rng(0)
    out = {}
    for v in range(1, 17):
        frames = rng.integers(0, 256, (n_frames, 48, 64), dtype=np.uint8)
        frames[:, 0, 0] = v
        out[v] = frames
    return out


@pytest.mark.parametrize("split,events", [("A", "standard"), ("B", "standard"), ("B", "subtle")])
def test_split_layout_is_read_by_the_toolkit(ped2_dev, tmp_path, split, events):
    plan = ped2_dev.SPLITS[split]
    summary = ped2_dev.build_split(_videos(), split, tmp_path, events)
    assert summary["events"] == events
    ds = open_dataset(tmp_path)
    assert [v.name for v in ds.train] == [f"{v:02d}" for v in plan["train"]]
    assert [(int(e["source"]), e["event"]) for e in summary["testing"]] == list(plan["test"])
    for v, e in zip(ds.test, summary["testing"]):
        frames = v.load()
        assert int(v.labels.sum()) == e["anomalous"] > 0 and len(v.labels) == len(frames)
        assert (frames[:, 0, 0] == int(e["source"])).all()          # cut from the video it names
    # test footage never comes from a training video, and each source's frames are used once
    assert not {int(e["source"]) for e in summary["testing"]} & set(plan["train"])
    spans = sorted((e["source"], *e["source_frames"]) for e in summary["testing"])
    assert all(a[0] != b[0] or a[2] <= b[1] for a, b in zip(spans, spans[1:]))


def test_missing_or_short_videos_are_refused(ped2_dev, tmp_path):
    videos = _videos()
    del videos[14]
    with pytest.raises(UserError, match="lacks video"):
        ped2_dev.build_split(videos, "A", tmp_path / "a")
    with pytest.raises(UserError, match="too few"):
        ped2_dev.build_split(_videos(n_frames=120), "A", tmp_path / "b")


def test_an_out_folder_built_for_another_set_is_refused(ped2_dev, tmp_path):
    ped2_dev.build_split(_videos(), "B", tmp_path / "data")
    ped2_dev._refuse_other_set(tmp_path / "data", "B", "standard")           # the same set: reused
    for split, events in (("B", "subtle"), ("A", "standard")):
        with pytest.raises(SystemExit, match="holds split B with standard events"):
            ped2_dev._refuse_other_set(tmp_path / "data", split, events)
    ped2_dev._refuse_other_set(tmp_path / "nothing", "A", "subtle")           # nothing built yet
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "ped2_dev.json").write_text("{not json")
    with pytest.raises(SystemExit, match="is not a development set's summary"):
        ped2_dev._refuse_other_set(tmp_path / "broken", "B", "standard")


def test_split_c_glides_walkers_of_its_own_source_video(ped2_dev, tmp_path):
    """Split C: eight test videos, two per source video 13-16, each with a labelled glider that is
    the source's own walker; the training videos are 01-12."""
    videos = {}
    for v in range(1, 17):
        frames = np.full((150, 48, 64), 120, np.uint8)
        for i in range(150):
            x = (3 * v + i // 3) % 50
            frames[i, 20:32, x:x + 4] = 20 + v                 # a walker whose grey level names the video
        frames[:, 0, 0] = v
        videos[v] = frames
    summary = ped2_dev.build_split(videos, "C", tmp_path, "subtle")
    ds = open_dataset(tmp_path)
    assert [v.name for v in ds.train] == [f"{v:02d}" for v in range(1, 13)]
    assert [int(e["source"]) for e in summary["testing"]] == [13, 13, 14, 14, 15, 15, 16, 16]
    for v, e in zip(ds.test, summary["testing"]):
        frames, src = v.load(), int(e["source"])
        assert e["event"] == "glider" and int(v.labels.sum()) == e["anomalous"] > 0
        walker = (frames[..., 0] == 20 + src)
        # while the glider is labelled, two walkers of the source's own grey are in view
        n_cols = walker[v.labels == 1].any(axis=1).sum(axis=1)
        assert (n_cols > 4).mean() > 0.8 and walker.any(axis=(1, 2)).all()
