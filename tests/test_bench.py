"""bench: streaming pipeline vs the offline one, runners agree, resampling, alerts, CLI outputs, and
the ONNX-only path without torch.

Expected values come from independent computations: the offline path (read_video + prepare_frames +
clip_loop.score_prepared), contract.resample_indices, a run-based reference of the alert rules,
and the labels the video was written with.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from m2s2l_deploy.data.readers import label_runs
from m2s2l_deploy.report.alerts import AlertTracker, alert_events, score_alerts
from m2s2l_deploy.data.stream import resample_stream
from m2s2l_deploy.jobs.bench import bench_video
from m2s2l_deploy.contract import prepare_frames, resample_indices
from m2s2l_deploy.data.synth import render_video_file
from m2s2l_deploy.data.video import read_video
from m2s2l_deploy.jobs.clip_loop import score_prepared
from m2s2l_deploy.model.checkpoint import load_checkpoint
from m2s2l_deploy.runners import TorchRunner
from cli_helpers import assert_user_error, run_cli
from conftest import VTEST

pytest.importorskip("onnxruntime")
from m2s2l_deploy.export.exporter import export_onnx  # noqa: E402
from m2s2l_deploy.runners.factory import make_runner  # noqa: E402

ATOL, RTOL = 1e-4, 1e-4       # torch vs ORT on frame scores (export parity is 1e-5 + 1e-4 on every output)
QUIET = dict(log=lambda *_: None)


def close(a, b, atol=ATOL, rtol=RTOL) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= atol + rtol * np.abs(b)))


@pytest.fixture(scope="module")
def onnx_files(trained_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("bench-onnx")
    whole = export_onnx(trained_run, d / "tiny-loop.onnx", scan="loop").paths[0]
    export_onnx(trained_run, d / "tiny-split.onnx", scan="loop", split=True)
    plugin = export_onnx(trained_run, d / "tiny-plugin.onnx", scan="plugin").paths[0]
    return {"whole": whole, "split": d / "tiny-split.onnx", "plugin": plugin}


@pytest.fixture(scope="module")
def synth_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench-video") / "cyclist.avi"
    labels = render_video_file(path, seed=4, n_frames=36, events=("cyclist",))
    return path, labels


# -- alert rules ----------------------------------------------------------------------------------
def reference_events(scores, thr, min_frames, merge_gap):
    """The alert rules written over runs of above-threshold frames (offline), for comparison."""
    above = np.asarray(scores) > thr
    runs, t = [], 0
    while t < len(above):
        if above[t]:
            s = t
            while t < len(above) and above[t]:
                t += 1
            runs.append((s, t - 1))
        else:
            t += 1
    events, i = [], 0
    while i < len(runs):
        if runs[i][1] - runs[i][0] + 1 < min_frames:
            i += 1
            continue
        start, end = runs[i]
        j = i + 1
        while j < len(runs) and runs[j][0] - end - 1 <= merge_gap:
            end = runs[j][1]
            j += 1
        seg = np.asarray(scores[start:end + 1])
        events.append((start, end, start + int(np.argmax(seg)), start + min_frames - 1))
        i = j
    return events


def test_alert_events_follow_the_rules_on_random_scores():
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(0, 60))
        scores = rng.normal(size=n).cumsum() * 0.5 if trial % 2 else rng.normal(size=n)
        thr = float(rng.normal(0.5, 0.5))
        m, g = int(rng.integers(1, 5)), int(rng.integers(0, 6))
        got = [(e.start_frame, e.end_frame, e.peak_frame, e.raised_frame) for e in alert_events(scores, thr, min_frames=m, merge_gap=g)]
        assert got == reference_events(scores, thr, m, g), (trial, scores, thr, m, g)


def test_alert_tracker_is_live():
    """The tracker knows an alert at the frame it is raised, and closes it merge_gap frames later."""
    scores = [0, 5, 5, 5, 0, 0, 5, 0, 0, 0, 0]
    tr = AlertTracker(1.0, min_frames=3, merge_gap=2)
    states, closed = [], []
    for s in scores:
        ev = tr.update(s)
        states.append((tr.active, tr.opened))
        if ev is not None:
            closed.append((tr.frame, ev))
    assert [o for _, o in states].index(True) == 3                    # raised at the 3rd frame above
    frame, ev = closed[0]
    assert (ev.start_frame, ev.end_frame, ev.raised_frame, frame) == (1, 6, 3, 9)
    assert ev.to_dict(fps=10.0)["start_s"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        alert_events([0.0, float("nan")], 1.0)


# -- resampling -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n,src,dst", [(1, 30, 10), (50, 30, 10), (49, 25, 10), (37, 10, 25), (20, 7.5, 10),
                                       (33, 29.97, 10), (12, 10, 10), (40, 12, 5)])
def test_resample_stream_matches_resample_indices(n, src, dst):
    got = [(k, i) for k, i, _ in resample_stream(((i, i) for i in range(n)), src, dst)]
    want = resample_indices(n, src, dst)
    assert [k for k, _ in got] == list(range(len(want)))
    assert [i for _, i in got] == list(want)


# -- the pipeline ---------------------------------------------------------------------------------
def test_bench_scores_equal_offline_scoring_and_onnx(trained_run, onnx_files, synth_video):
    """Streaming torch == offline torch (same runner), ORT whole-clip == torch, split streaming == whole."""
    path, _ = synth_video
    torch_runner = TorchRunner(trained_run)
    frames, _ = read_video(path)
    offline = score_prepared(torch_runner, prepare_frames(frames, torch_runner.contract), batch=8)
    got_torch = bench_video(torch_runner, path, batch=3, warmup=1, threshold="auto", **QUIET)
    T = torch_runner.contract.clip_len
    assert close(got_torch.scores, offline.frame_score, atol=1e-5, rtol=1e-5)
    assert list(got_torch.decidable) == [False] * (T - 1) + [True] * (len(frames) - T + 1)
    assert np.all(got_torch.scores[:T - 1] == got_torch.scores[T - 1])
    assert len(got_torch.latencies_ms) == len(frames) - T + 1

    ort = make_runner(onnx=onnx_files["whole"], checkpoint=trained_run, threads=1)
    got_ort = bench_video(ort, path, batch=8, warmup=1, **QUIET)
    assert close(got_ort.scores, got_torch.scores)
    assert got_ort.threshold == pytest.approx(got_torch.threshold)      # ONNX metadata == checkpoint

    split = make_runner(onnx=onnx_files["split"], threads=1)
    assert split.split
    got_split = bench_video(split, path, batch=5, warmup=0, **QUIET)
    assert close(got_split.scores, got_ort.scores, atol=1e-5, rtol=1e-4)
    assert split.frames_encoded == len(frames)                           # each frame encoded once


def test_bench_resamples_to_the_model_rate(trained_run, onnx_files, tmp_path):
    """A 30 fps file is scored at the model's 10 fps: the picks are resample_indices'."""
    path = tmp_path / "fast.mp4"
    render_video_file(path, seed=2, n_frames=40, events=(), fps=30.0)
    runner = make_runner(onnx=onnx_files["whole"], threads=1)
    assert runner.contract.fps == 10.0
    got = bench_video(runner, path, batch=4, warmup=0, **QUIET)
    want = resample_indices(40, 30.0, 10.0)
    assert list(got.source_index) == list(want)
    assert got.summary["resampled"] and got.summary["n_frames"] == len(want)
    frames, _ = read_video(path)
    offline = score_prepared(runner, prepare_frames(frames[want], runner.contract), batch=4)
    assert close(got.scores, offline.frame_score, atol=1e-5, rtol=1e-5)


def blatant_anomaly_video(path: Path, seed: int, n: int, segments) -> np.ndarray:
    """A clean synthetic scene with bright discs sweeping across it during ``segments``; labels."""
    base = path.with_name("base-" + path.name)
    render_video_file(base, seed=seed, n_frames=n, events=())
    frames, fps = read_video(base)
    h, w = frames.shape[1:3]
    labels = np.zeros(n, np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for t, f in enumerate(frames):
        f = f.copy()
        for i, (a, b) in enumerate(segments):
            if a <= t <= b:
                cv2.circle(f, (int(10 + (t - a) * (w - 20) / max(1, b - a)), h // 3 * (i % 2 + 1)), h // 10,
                           (255, 255, 255), -1)
                labels[t] = 1
        writer.write(f)
    writer.release()
    return labels


def test_alerts_cover_the_labelled_anomalies(trained_run, onnx_files, tmp_path):
    """With the threshold calibrated on normal footage (stored with the model), every labelled event
    gets an alert, no alert starts before its event (causal), and alerts end within T-1 frames of it
    (the clips still hold the object)."""
    path = tmp_path / "anomalies.avi"
    segments = [(25, 39), (60, 74)]
    labels = blatant_anomaly_video(path, seed=5, n=90, segments=segments)
    runner = make_runner(onnx=onnx_files["whole"], checkpoint=trained_run, threads=1)
    got = bench_video(runner, path, batch=8, warmup=0, threshold="auto", **QUIET)
    assert got.threshold == pytest.approx(load_checkpoint(trained_run, with_weights=False).threshold)
    T = runner.contract.clip_len
    assert len(got.alerts) == len(segments)
    for (a, b), ev in zip(segments, got.alerts):
        assert a <= ev.start_frame <= b and ev.end_frame <= b + T - 1
        assert ev.raised_frame == ev.start_frame + 2                   # default min_frames 3
    assert labels.sum() == sum(b - a + 1 for a, b in segments)


def test_bench_cli_writes_every_output(trained_run, onnx_files, synth_video, tmp_path):
    path, labels = synth_video
    out = tmp_path / "out"
    proc = run_cli("bench", path, "--onnx", onnx_files["whole"], "--checkpoint", trained_run, "--threads", "1",
                   "--batch", "4", "--json", out / "b.json", "--scores-csv", out / "s.csv", "--plot", out / "p.png",
                   "--annotate", out / "a.mp4")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    s = json.loads((out / "b.json").read_text())
    for key in ("fps_model", "fps_e2e", "n_frames", "alerts", "threshold", "machine"):
        assert key in s
    assert set(s["latency_ms"]) >= {"p50", "p90", "p99"} and s["latency_ms"]["p50"] <= s["latency_ms"]["p99"]
    assert s["n_frames"] == len(labels) and s["n_flagged_frames"] == 4
    with open(out / "s.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(labels)
    T = load_checkpoint(trained_run, with_weights=False).contract.clip_len
    assert [int(r["decidable"]) for r in rows[:T]] == [0] * (T - 1) + [1]
    runner = make_runner(onnx=onnx_files["whole"], threads=1)
    direct = bench_video(runner, path, batch=4, warmup=0, **QUIET)
    assert close([float(r["score"]) for r in rows], direct.scores, atol=1e-4, rtol=1e-5)   # CSV keeps 6 digits
    assert (out / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cap = cv2.VideoCapture(str(out / "a.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(labels)
    cap.release()
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "b.json", "p.png", "s.csv"]   # no temp files left


@pytest.mark.skipif(not VTEST.exists(), reason=f"real footage {VTEST} not present (outside a developer checkout)")
def test_bench_on_real_footage(trained_run, onnx_files, tmp_path):
    """vtest.avi (768x576 colour, 10 fps): decoded, converted to the model's gray input size, scored."""
    proc = run_cli("bench", VTEST, "--onnx", onnx_files["split"], "--max-frames", "40", "--threads", "1",
                   "--batch", "4", "--json", tmp_path / "v.json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "v.json").read_text())
    assert s["n_frames"] == 40 and s["video_info"]["width"] == 768 and not s["resampled"]
    assert s["fps_e2e"] > 0 and s["fps_model"] > 0 and s["threshold"] is not None


@pytest.mark.parametrize("flag", [["--cuda-graph"], ["--compile"], ["--dtype", "fp16"]])
def test_bench_refuses_torch_runner_options_for_onnx(synth_video, onnx_files, flag):
    path, _ = synth_video
    assert_user_error(run_cli("bench", path, "--onnx", onnx_files["whole"], *flag), "options of the PyTorch runner")


def test_bench_refuses_several_videos_without_server(synth_video, trained_run):
    path, _ = synth_video
    assert_user_error(run_cli("bench", path, path, "--checkpoint", trained_run), "--server")


# -- the ONNX-only install: bench without torch -----------------------------------------------------
NO_TORCH = ("import sys; sys.modules['torch'] = None; sys.argv = ['m2s2l-deploy'] + sys.argv[1:]; "
            "from m2s2l_deploy.cli.app import main; main()")


def run_cli_without_torch(*args):
    """The CLI in a process where ``import torch`` fails, as on an ONNX-only install."""
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True,
                          timeout=900)


@pytest.mark.parametrize("which", ["synthetic", "vtest"])
def test_bench_onnx_runs_without_torch(which, onnx_files, synth_video, tmp_path):
    """`bench --onnx` (ONNX Runtime, alerts, CSV, plot, JSON) never imports torch."""
    if which == "vtest" and not VTEST.exists():
        pytest.skip(f"real footage {VTEST} not present (outside a developer checkout)")
    video = VTEST if which == "vtest" else synth_video[0]
    proc = run_cli_without_torch("bench", video, "--onnx", onnx_files["whole"], "--max-frames", "40",
                                 "--threads", "1", "--json", tmp_path / "b.json", "--scores-csv", tmp_path / "s.csv",
                                 "--plot", tmp_path / "p.png")
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "b.json").read_text())
    assert s["n_frames"] == min(40, s["video_info"]["frames_decoded"]) and s["runner"].startswith("onnxruntime")
    assert "torch" not in s["machine"] and s["threshold"] is not None
    assert (tmp_path / "s.csv").is_file() and (tmp_path / "p.png").is_file()


def _csv_scores(path):
    rows = list(csv.DictReader(open(path)))
    return np.array([float(r["score"]) for r in rows])


def test_bench_plugin_form_runs_the_compiled_scan_without_torch(onnx_files, tmp_path):
    """The CPU user's form: `bench --onnx` on a plugin export runs the Numba scan op (no torch in the
    process) on real footage, and scores every frame as the loop export does."""
    if not VTEST.exists():
        pytest.skip(f"real footage {VTEST} not present (outside a developer checkout)")
    pytest.importorskip("onnxruntime_extensions")
    args = [VTEST, "--max-frames", "30", "--threads", "1"]
    proc = run_cli_without_torch("bench", *args, "--onnx", onnx_files["plugin"], "--json", tmp_path / "p.json",
                                 "--scores-csv", tmp_path / "p.csv")
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "p.json").read_text())
    assert s["runner"] == "onnxruntime-plugin+numba" and "torch" not in s["machine"]
    assert s["machine"]["scan_kernel"] == "numba" and s["machine"]["scan_threads"] == 1
    proc = run_cli_without_torch("bench", *args, "--onnx", onnx_files["whole"], "--scores-csv", tmp_path / "l.csv")
    assert proc.returncode == 0, proc.stderr
    plugin, loop = _csv_scores(tmp_path / "p.csv"), _csv_scores(tmp_path / "l.csv")
    assert len(plugin) == len(loop) == 30
    np.testing.assert_allclose(plugin, loop, rtol=1e-4, atol=1e-4)


def test_torch_verbs_say_which_extra_without_torch(small_scene, synth_video, tmp_path):
    """Verbs that run PyTorch fail in one line naming the extra, not with an ImportError."""
    assert_user_error(run_cli_without_torch("train", "--data", small_scene, "--steps", "1", "--out", tmp_path / "r"),
                      "needs torch", "m2s2l-deploy[torch]")
    assert_user_error(run_cli_without_torch("bench", synth_video[0], "--checkpoint", tmp_path / "r"),
                      "needs torch", "m2s2l-deploy[torch]")


def test_alerts_scored_against_labels_by_brute_force():
    """score_alerts against a frame-by-frame count on random label/score sequences."""
    rng = np.random.default_rng(3)
    for _ in range(30):
        labels = (rng.random(200) < 0.02).astype(int)
        labels = np.convolve(labels, np.ones(12), mode="same") > 0          # events of ~12 frames
        scores = labels * rng.random(200) * 2 + rng.random(200) * 1.2
        events = alert_events(scores, 1.0, min_frames=2, merge_gap=1)
        runs = label_runs(labels)
        r = score_alerts(events, runs)
        assert all(labels[a:b + 1].all() and (a == 0 or not labels[a - 1]) and (b == 199 or not labels[b + 1])
                   for a, b in runs) and sum(b - a + 1 for a, b in runs) == labels.sum()
        covered = np.zeros(200, bool)
        for e in events:
            covered[e.start_frame:e.end_frame + 1] = True
        assert r["found"] == sum(covered[a:b + 1].any() for a, b in runs)
        assert r["missed"] == len(runs) - r["found"] and r["alerts"] == len(events)
        assert r["false_alerts"] == sum(not labels[e.start_frame:e.end_frame + 1].any() for e in events)
        assert len(r["delay_frames"]) == r["found"] and all(d >= 0 for d in r["delay_frames"])
    assert score_alerts([], label_runs(np.zeros(10))) == {"events": 0, "found": 0, "missed": 0, "alerts": 0,
                                                "false_alerts": 0, "delay_frames": []}
