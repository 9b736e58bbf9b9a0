"""watch: a stream made here on loopback, cut and then stalled; frame folders with per-source
settings; alerts as JSON lines while the stream runs; SIGTERM; a hanging webhook; a source faster
than the scorer; bad sources.

Expected values come from independent computations: offline scores are the clip loop
(``clip_loop.score_prepared``) on frames decoded here from the very bytes the test camera sent, or
``bench`` on the video the frames came from; alert lists are ``report.alerts.alert_events``'.
Every socket is on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from m2s2l_deploy.contract import prepare_frames
from m2s2l_deploy.data.sources import parse_source
from m2s2l_deploy.errors import UserError
from m2s2l_deploy.jobs.bench import bench_video
from m2s2l_deploy.jobs.clip_loop import score_prepared
from m2s2l_deploy.jobs.roi import RegionOfInterest
from m2s2l_deploy.jobs.watch import SourcePlan, Watch, WatchOptions
from m2s2l_deploy.report.alerts import LiveAlerts, alert_events
from m2s2l_deploy.report.events import EventLog
from m2s2l_deploy.report.webhook import Webhook
from cli_helpers import assert_user_error, run_cli
from conftest import VTEST
from live_server import LiveServer, closed_port

needs_vtest = pytest.mark.skipif(not VTEST.exists(), reason=f"real footage {VTEST} not present (outside a developer checkout)")
QUIET = dict(log=lambda *_: None)
LOW = -1e9            # a threshold every frame is above: alerts are forced


def torch_runner(run):
    from m2s2l_deploy.runners import TorchRunner
    return TorchRunner(run)


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- pieces (no model) ------------------------------------------------------------------------------
def test_live_alerts_are_the_offline_events_at_the_stream_frame_indices():
    rng = np.random.default_rng(1)
    for trial in range(100):
        scores = rng.normal(size=int(rng.integers(1, 80))).cumsum() * 0.5
        frames = np.cumsum(rng.integers(1, 4, len(scores)))                # dropped frames leave holes
        live = LiveAlerts(0.3, min_frames=3, merge_gap=2, source="cam")
        starts, ends = [], []
        for k, s in zip(frames, scores):
            for ev in live.update(s, {"frame": int(k), "wall": 1e9 + k / 10}):
                (starts if ev["event"] == "alert_start" else ends).append(ev)
        ends += live.finish("end")
        want = alert_events(scores, 0.3, min_frames=3, merge_gap=2)
        assert [(e["start_frame"], e["end_frame"], e["peak"]["frame"], e["raised_frame"]) for e in ends] == \
            [(frames[w.start_frame], frames[w.end_frame], frames[w.peak_frame], frames[w.raised_frame]) for w in want]
        assert [e["start_frame"] for e in starts] == [e["start_frame"] for e in ends]
        assert live.closed == [{k: v for k, v in e.items() if k != "_payload"} for e in ends]


def test_event_log_rotates_by_size_and_every_line_is_json(tmp_path):
    path = tmp_path / "ev.jsonl"
    log = EventLog(path, max_bytes=2048, keep=2)
    for i in range(120):
        log.write({"event": "x", "i": i, "score": float("nan") if i == 7 else 0.5})
    log.close()
    files = [path, tmp_path / "ev.jsonl.1", tmp_path / "ev.jsonl.2"]
    assert all(p.is_file() and p.stat().st_size <= 2048 for p in files) and not (tmp_path / "ev.jsonl.3").exists()
    lines = [e for p in reversed(files) for e in jsonl(p)]
    assert [e["i"] for e in lines] == list(range(120 - len(lines), 120)) and all("time" in e for e in lines)


def test_webhook_posts_in_the_background_and_never_blocks(tmp_path):
    import http.server

    got = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            got.append((self.headers.get("Authorization"), json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(204)
            self.end_headers()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(8)                   # accepts connections (kernel backlog), never answers
    try:
        hook = Webhook(f"http://user:pw@127.0.0.1:{httpd.server_address[1]}/h", timeout_s=5)
        for i in range(3):
            hook.post({"event": "alert_start", "i": i})
        stats = hook.close(grace_s=5)
        assert stats["sent"] == 3 and [b["i"] for _, b in got] == [0, 1, 2] and got[0][0].startswith("Basic ")
        assert "pw" not in stats["url"]
        slow = Webhook(f"http://127.0.0.1:{hanging.getsockname()[1]}/h", timeout_s=30)
        t0 = time.perf_counter()
        for i in range(5):
            slow.post({"event": "alert_end", "i": i})
        assert time.perf_counter() - t0 < 0.05
        t0 = time.perf_counter()
        stats = slow.close(grace_s=0.5)
        assert time.perf_counter() - t0 < 2.0 and stats["sent"] == 0 and stats["pending"] >= 4
    finally:
        httpd.shutdown()
        hanging.close()


def test_region_of_interest_caps_scores_whose_hottest_patch_is_outside(trained_run, tmp_path):
    from m2s2l_deploy.model.checkpoint import load_checkpoint
    contract = load_checkpoint(trained_run).contract
    mask = np.zeros((576, 768), np.uint8)
    mask[:, :384] = 255                                   # the left half of the camera frame is watched
    cv2.imwrite(str(tmp_path / "roi.png"), mask)
    roi = RegionOfInterest(tmp_path / "roi.png", contract)
    h, w = contract.height, contract.width
    left, right = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
    left[h // 2 - 4:h // 2 + 4, 10:18] = 5.0
    right[h // 2 - 4:h // 2 + 4, w - 18:w - 10] = 5.0
    assert roi.score(7.0, left, 2.0) == 7.0 and roi.score(7.0, right, 2.0) == 2.0 and roi.score(1.0, right, 2.0) == 1.0
    cv2.imwrite(str(tmp_path / "black.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(UserError, match="empty"):
        RegionOfInterest(tmp_path / "black.png", contract)


# -- scoring -------------------------------------------------------------------------------------------
def test_png_folder_in_watch_with_per_source_thresholds_and_masks(trained_run, png_folder, tmp_path):
    """Two sources (the same lossless frames of vtest.avi under two names) with their own settings:
    one scores as bench scores the video, the other's mask caps the frames whose hottest patch is outside."""
    n = len(list(png_folder.iterdir()))
    video = bench_video(torch_runner(trained_run), VTEST, max_frames=n, batch=4, warmup=0, threshold=None, **QUIET)
    (tmp_path / "masked-cam").symlink_to(png_folder, target_is_directory=True)   # the same camera, other settings
    corner = np.zeros((576, 768), np.uint8)
    corner[:72, :96] = 255
    cv2.imwrite(str(tmp_path / "corner.png"), corner)
    records: dict[str, list] = {}
    plans = [SourcePlan(parse_source(png_folder, 10.0), LOW),
             SourcePlan(parse_source(tmp_path / "masked-cam", 10.0), 0.0, tmp_path / "corner.png")]
    job = Watch(plans, lambda: torch_runner(trained_run), WatchOptions(batch=2, warmup=0),
                on_frame=lambda name, r: records.setdefault(name, []).append(r), **QUIET)
    summary = job.run(threading.Event(), tick_s=0.1)
    assert summary["stop_reason"] == "every source ended or failed"
    plain, masked = (records[p.source.name] for p in plans)
    np.testing.assert_allclose([r["score"] for r in plain], video.scores, rtol=0, atol=1e-6)
    assert [r["frame"] for r in plain] == list(range(n)) and [r["decidable"] for r in plain[:5]] == [False] * 4 + [True]
    np.testing.assert_allclose([r["model_score"] for r in masked], video.scores, rtol=0, atol=1e-6)
    capped = [r["score"] != r["model_score"] for r in masked]
    assert any(capped) and all(r["score"] == min(r["model_score"], 0.0) for r, c in zip(masked, capped) if c)
    a, b = summary["sources"]
    assert len(a["alerts"]) == 1 and a["alerts"][0]["reason"] == "source ended" and b["threshold"] == 0.0
    assert b["roi"].endswith("corner.png") and a["roi"] is None and all(s["state"] == "ended" for s in summary["sources"])
    assert a["frames_in"] == a["scored"] == n and a["dropped"] == 0


@needs_vtest
def test_live_stream_survives_a_cut_and_a_stall_with_offline_scores(trained_run, jpeg_parts, tmp_path):
    """vtest served live over MJPEG; the test cuts it, then stalls it: two gaps, scores equal offline."""
    parts, decoded = jpeg_parts
    events = tmp_path / "events.jsonl"
    records, logs = [], []
    server = LiveServer(parts, fps=10).start()
    log = EventLog(events)
    job = Watch([SourcePlan(parse_source(server.url), LOW)], lambda: torch_runner(trained_run),
                WatchOptions(stall_timeout_s=1.0, max_retries=2, backoff_s=0.2, warmup=1), events=log,
                on_frame=lambda name, r: records.append(r), log=logs.append)
    reader = job.sources[0].reader
    stop, result = threading.Event(), {}
    runner_thread = threading.Thread(target=lambda: result.update(summary=job.run(stop, tick_s=0.1)))
    runner_thread.start()
    try:
        wait_for(lambda: len(records) >= 10, 30, "10 scored frames")
        started = [e for e in jsonl(events) if e["event"] == "alert_start"]       # read while the stream runs
        assert started and started[0]["source"] == server.url and started[0]["threshold"] == LOW
        server.cut(1.0)
        wait_for(lambda: len(reader.gaps) == 1, 20, "the stream back after the cut")
        n = len(records)
        wait_for(lambda: len(records) >= n + 10, 30, "10 frames after the cut")
        server.stall(2.5)
        wait_for(lambda: len(reader.gaps) == 2, 20, "the stream back after the stall")
        n = len(records)
        wait_for(lambda: len(records) >= n + 10, 30, "10 frames after the stall")
    finally:
        stop.set()
        runner_thread.join(60)
        server.stop()
        log.close()
    summary = result["summary"]
    src = summary["sources"][0]
    assert src["opened"] and len(src["gaps"]) == 2 and "stalled" in src["gaps"][1]["reason"]
    assert "stalled" not in src["gaps"][0]["reason"] and src["gaps"][1]["seconds"] >= 1.0

    # every run of contiguous frames (a new one after each gap) scores as the clip loop on the same frames
    runner = torch_runner(trained_run)
    runs = {}
    for r in records:
        runs.setdefault(r["run"], []).append(r)
    for run in runs.values():
        frames = np.stack([decoded[server.frame_of(r["ts"])] for r in run])
        offline = score_prepared(runner, prepare_frames(frames, runner.contract), batch=8).frame_score
        np.testing.assert_allclose([r["model_score"] for r in run], offline, rtol=1e-5, atol=1e-5)
    for gap in src["gaps"]:                                  # each gap is refilled, the index estimate holds
        after = [r for r in records if r["frame"] >= gap["to_frame"] and r["decidable"]]
        before = [r for r in records if r["frame"] <= gap["from_frame"]]
        assert after and before and after[0]["run"] > before[-1]["run"]
        first_after = min((r for r in records if r["frame"] >= gap["to_frame"]), key=lambda r: r["frame"])
        true_step = round((first_after["ts"] - before[-1]["ts"]) * 10)
        assert abs((first_after["frame"] - before[-1]["frame"]) - true_step) <= 3, (gap, true_step)

    # the JSON lines: all valid, alert ends equal the run's alert list, every end has its start
    lines = jsonl(events)
    kinds = [e["event"] for e in lines]
    assert kinds[0] == "watch_start" and kinds[-1] == "watch_stop" and kinds.count("stream_resumed") == 2
    ends = [e for e in lines if e["event"] == "alert_end"]
    starts = [e for e in lines if e["event"] == "alert_start"]
    assert ends == src["alerts"] and len(ends) == 3
    assert [(e["start_frame"], e["raised_frame"]) for e in starts] == [(e["start_frame"], e["raised_frame"]) for e in ends]
    assert [e["reason"].split(" (")[0] for e in ends] == ["stream lost", "stream lost", "stopped"]
    assert any("resumed after" in m for m in logs)


@needs_vtest
def test_hanging_webhook_does_not_slow_scoring(trained_run, png_folder):
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(8)
    try:
        hook = Webhook(f"http://127.0.0.1:{hanging.getsockname()[1]}/alerts", timeout_s=30)
        job = Watch([SourcePlan(parse_source(png_folder, 10.0), LOW)], lambda: torch_runner(trained_run),
                    WatchOptions(warmup=0), webhook=hook, **QUIET)
        t0 = time.monotonic()
        summary = job.run(threading.Event(), tick_s=0.1)
        elapsed = time.monotonic() - t0
    finally:
        hanging.close()
    src = summary["sources"][0]
    assert src["scored"] == 14 and len(src["alerts"]) == 1
    assert elapsed < 20 and src["latency_ms"]["p99"] < 5000          # one webhook request alone would take 30 s
    assert summary["webhook"]["sent"] == 0 and summary["webhook"]["pending"] >= 1


def test_a_source_that_never_opens_leaves_the_others_running(trained_run, png_folder):
    lines = []
    bad = f"http://user:pw@127.0.0.1:{closed_port()}/stream"
    job = Watch([SourcePlan(parse_source(bad)), SourcePlan(parse_source(png_folder, 10.0))],
                lambda: torch_runner(trained_run), WatchOptions(max_retries=1, backoff_s=0.1, warmup=0), log=lines.append)
    summary = job.run(threading.Event(), tick_s=0.1)
    down, up = summary["sources"]
    assert not down["opened"] and down["state"] == "failed" and "Connection refused" in down["error"]
    assert up["scored"] == 14 and summary["opened_any"]
    errors = [m for m in lines if m.startswith("error:")]
    assert len(errors) == 1 and "2 tries" in errors[0] and "pw" not in errors[0]


# -- the CLI -------------------------------------------------------------------------------------------
def test_watch_cli_bad_sources_one_line_each(trained_run, tmp_path):
    assert_user_error(run_cli("watch", "ftp://cam/1", "--checkpoint", trained_run), "unknown scheme")
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("watch", tmp_path / "empty", "--checkpoint", trained_run), "no image frames")
    url = f"http://admin:s3cret@127.0.0.1:{closed_port()}/video"
    proc = run_cli("watch", url, "camera:97", "--checkpoint", trained_run, "--max-retries", "1", "--threads", "1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "s3cret" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "camera:97" in errors[1] + errors[0] and "127.0.0.1" in errors[0] + errors[1]


def test_live_reader_stops_on_a_live_stream_that_keeps_sending(jpeg_parts):
    """stop() ends the reader thread of a live source that never pauses (a live source never waits for
    queue room, so it must look at stop itself): a reader still running when Python exits aborts it."""
    from m2s2l_deploy.data.live import LiveReader
    server = LiveServer(jpeg_parts[0][:20], fps=100).start()
    reader = LiveReader(parse_source(server.url), 10.0, queue_frames=4, stall_timeout_s=2.0).start()
    try:
        wait_for(lambda: reader.frames_in >= 10, 20, "frames from the live source")
        reader.stop()
        reader.join(5.0)
        assert not reader._thread.is_alive()
        assert reader.state == "stopped"
        assert reader.get() is None
    finally:
        reader.stop()
        server.stop()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


@needs_vtest
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_watch_cli_sigterm_with_a_source_faster_than_the_scorer(trained_run, vtest_frames, tmp_path):
    """A camera whose clock says 10 fps (the model's rate) sending 100 frames a second, into a scorer of
    about 50-70 fps (1 thread, Numba scan): drops counted, memory flat; SIGTERM: summary, exit 0, no
    process left."""
    small = [cv2.resize(f, (384, 288), interpolation=cv2.INTER_AREA) for f in vtest_frames[:100]]
    parts = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes() for f in small]
    server = LiveServer(parts, fps=100, timestamps=[i / 10 for i in range(len(parts))], period=len(parts) / 10,
                        auth=("viewer", "s3cret-pw")).start()
    url = server.url.replace("http://", "http://viewer:s3cret-pw@")
    ev, js, snaps = tmp_path / "ev.jsonl", tmp_path / "summary.json", tmp_path / "snaps"
    out, err = open(tmp_path / "out.txt", "w"), open(tmp_path / "err.txt", "w")
    proc = subprocess.Popen([sys.executable, "-m", "m2s2l_deploy.cli", "watch", url, "--checkpoint", str(trained_run),
                             "--threads", "1", "--threshold", str(LOW), "--events", str(ev), "--json", str(js),
                             "--snapshots", str(snaps), "--queue", "8", "--stall-timeout", "5"],
                            stdout=out, stderr=err, start_new_session=True)
    try:
        wait_for(lambda: ev.exists() and "alert_start" in ev.read_text(), 90, "the first alert")
        time.sleep(2.0)
        rss0 = _rss_mb(proc.pid)
        time.sleep(4.0)
        rss1 = _rss_mb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        server.stop()
        out.close()
        err.close()
    stdout, stderr = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert rc == 0, stderr
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)                               # no process of its group is left
    summary = json.loads(js.read_text())
    src = summary["sources"][0]
    assert summary["stop_reason"] == "stopped" and src["scored"] > 20 and src["dropped"] > 0
    assert src["frames_in"] >= src["scored"] + src["dropped"]
    assert rss1 - rss0 < 20, (rss0, rss1)
    lines = jsonl(ev)
    assert lines[-1]["event"] == "watch_stop" and [e["event"] for e in lines].count("alert_end") == 1
    assert any(p.suffix == ".jpg" for p in snaps.iterdir())
    for text in (stdout, stderr, ev.read_text(), js.read_text()):
        assert "s3cret" not in text and "viewer:" not in text
    assert "Traceback" not in stderr
