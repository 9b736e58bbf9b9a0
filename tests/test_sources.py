"""Sources for bench and watch: SOURCE parsing and credential masking, resampling by timestamps,
the MJPEG reader against a camera made here on loopback, frame folders and streams in bench.

Expected values come from independent computations: resampling picks are
``contract.resample_indices``', offline scores are the clip loop (``clip_loop.score_prepared``) on
frames decoded here from the very bytes the test camera sent.
"""

from __future__ import annotations


import cv2
import numpy as np
import pytest

from m2s2l_deploy.contract import prepare_frames, resample_indices
from m2s2l_deploy.data.opened import SourceError
from m2s2l_deploy.data.sources import parse_source
from m2s2l_deploy.data.stream import resample_by_time
from m2s2l_deploy.errors import UserError
from m2s2l_deploy.jobs.bench import bench_video
from m2s2l_deploy.jobs.clip_loop import score_prepared
from cli_helpers import assert_user_error, run_cli
from conftest import VTEST
from live_server import LiveServer, closed_port

needs_vtest = pytest.mark.skipif(not VTEST.exists(), reason=f"real footage {VTEST} not present (outside a developer checkout)")
QUIET = dict(log=lambda *_: None)


def torch_runner(run):
    from m2s2l_deploy.runners import TorchRunner
    return TorchRunner(run)


@pytest.mark.parametrize("n,src,dst", [(50, 30, 10), (49, 25, 10), (37, 10, 25), (20, 7.5, 10), (33, 29.97, 10),
                                       (12, 10, 10), (40, 12, 5)])
def test_resample_by_time_matches_resample_indices(n, src, dst):
    got = list(resample_by_time(((i, i / src, i) for i in range(n)), dst, max_hole_s=1.0))
    want = resample_indices(n, src, dst)
    assert [k for k, *_ in got] == list(range(len(want)))
    assert [i for _, i, _, _ in got] == list(want)
    assert [f for *_, f in got] == [True] + [False] * (len(want) - 1)


def test_resample_by_time_restarts_at_holes_instead_of_repeating():
    stamps = [0.0, 0.1, 0.2, 1.5, 1.6, 1.0, 1.1]          # a 1.3 s hole, then the clock goes backwards
    got = [(k, i, fresh) for k, i, _, fresh in resample_by_time(((i, t, i) for i, t in enumerate(stamps)), 10, 0.5)]
    assert got == [(0, 0, True), (1, 1, False), (2, 2, False), (15, 3, True), (16, 4, False), (17, 5, True),
                   (18, 6, False)]


def test_parse_source_kinds_credentials_and_errors(tmp_path, png_folder):
    s = parse_source("rtsp://admin:hunter2@127.0.0.1:554/live?token=abc&ch=1")
    assert s.kind == "rtsp" and s.live and "hunter2" not in s.name and "abc" not in s.name
    assert "hunter2" not in repr(s) and s.name == "rtsp://***@127.0.0.1:554/live?token=***&ch=1"
    assert parse_source("camera:0").kind == "camera" and parse_source("HTTPS://h/x").kind == "http"
    assert parse_source(png_folder, 10).kind == "folder" and parse_source(VTEST).kind == "file"
    (tmp_path / "empty").mkdir()
    for text, needle in (("ftp://x/y", "unknown scheme"), ("camera:front", "camera:N"), (tmp_path / "none", "not found"),
                         (tmp_path / "empty", "no image frames"), ("http:///x", "no host")):
        with pytest.raises(UserError, match=needle):
            parse_source(text)
    with pytest.raises(SourceError, match="no such camera"):
        parse_source("camera:97").open(1.0)
    with pytest.raises(SourceError) as e:                      # nothing listens there: one line, no password
        parse_source(f"rtsp://admin:hunter2@127.0.0.1:{closed_port()}/x").open(1.0)
    assert "***" in str(e.value) and "hunter2" not in str(e.value)


def test_mjpeg_source_gives_the_parts_and_their_timestamps(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), np.uint8) for _ in range(6)]
    parts = [cv2.imencode(".png", im)[1].tobytes() for im in images]        # lossless: exact comparison
    server = LiveServer(parts, fps=20, auth=("viewer", "pw")).start()
    try:
        with pytest.raises(SourceError, match="401"):
            parse_source(server.url).open(2.0)
        opened = parse_source(server.url.replace("http://", "http://viewer:pw@")).open(2.0)
        got = []
        for _, ts, frame in opened.frames():
            got.append((ts, frame))
            if len(got) == 8:
                break
        opened.close()
    finally:
        server.stop()
    for ts, frame in got:
        assert np.array_equal(frame, images[server.frame_of(ts)])
    steps = np.diff([ts for ts, _ in got])
    assert np.allclose(steps, 0.05, atol=1e-6)                              # consecutive frames, by their stamps


# -- bench on the new sources ------------------------------------------------------------------------
@needs_vtest
def test_png_folder_scores_like_its_video(trained_run, png_folder, tmp_path):
    """A folder of lossless frames of vtest.avi, played at --fps 10, gives the video's scores."""
    runner = torch_runner(trained_run)
    n = len(list(png_folder.iterdir()))
    video = bench_video(runner, VTEST, max_frames=n, batch=4, warmup=0, threshold=None, **QUIET)
    folder = bench_video(runner, png_folder, fps=10.0, batch=4, warmup=0, threshold=None, **QUIET)
    np.testing.assert_allclose(folder.scores, video.scores, rtol=0, atol=1e-6)
    assert list(folder.source_index) == list(range(n))


@needs_vtest
def test_bench_scores_a_stream_resampled_by_its_timestamps(trained_run, jpeg_parts):
    """bench on a 30 fps MJPEG stream for --max-frames frames: every third frame, scored as offline."""
    parts, decoded = jpeg_parts
    runner = torch_runner(trained_run)
    server = LiveServer(parts, fps=30, timestamps=[i / 30 for i in range(len(parts))]).start()
    try:
        got = bench_video(runner, server.url, max_frames=24, batch=2, warmup=0, **QUIET)
    finally:
        server.stop()
    assert list(got.source_index) == list(range(0, 24, 3)) and got.summary["resampled"]
    assert got.summary["video_info"]["width"] == 768 and got.summary["video_info"]["frames_decoded"] == 24
    (first,) = server.first_frames                       # the frame on air when bench connected
    frames = np.stack([decoded[first + i] for i in got.source_index])
    offline = score_prepared(runner, prepare_frames(frames, runner.contract), batch=4).frame_score
    np.testing.assert_allclose(got.scores, offline, rtol=1e-5, atol=1e-5)


def test_bench_refuses_a_stream_without_max_frames(trained_run):
    assert_user_error(run_cli("bench", "rtsp://127.0.0.1:1/x", "--checkpoint", trained_run), "--max-frames")
