"""A real Triton Inference Server: PyTriton hosting our runner, and the tritonserver binary
nvidia-pytriton ships loading a packaged python-backend repository.

Everything runs on loopback with ports chosen at run time; every server is started by a fixture and
stopped by its finalizer (also when a test fails); every load loop is bounded in time and count.
Scores through a server are compared with the local ONNX Runtime runner on the same clips.
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
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("pytriton")
grpcclient = pytest.importorskip("tritonclient.grpc")
import torch  # noqa: E402

from m2s2l_deploy.contract import InputContract, prepare_frames, resample_indices  # noqa: E402
from m2s2l_deploy.data.synth import render_video_file  # noqa: E402
from m2s2l_deploy.data.video import read_video  # noqa: E402
from m2s2l_deploy.errors import UserError  # noqa: E402
from m2s2l_deploy.model import M2S2L, preset_config  # noqa: E402
from m2s2l_deploy.model.checkpoint import save_checkpoint  # noqa: E402
from m2s2l_deploy.export.exporter import export_onnx  # noqa: E402
from m2s2l_deploy.runners.onnx_runner import OnnxRunner  # noqa: E402
from m2s2l_deploy.serving.client import bench_streams  # noqa: E402
from m2s2l_deploy.serving.repository import package_repository  # noqa: E402
from m2s2l_deploy.serving.network import Endpoints, free_port  # noqa: E402
from m2s2l_deploy.serving.process import TritonServerProcess  # noqa: E402
from m2s2l_deploy.serving.server import PyTritonServer, served_model  # noqa: E402
from m2s2l_deploy.serving.stats import batching_summary, delta, settled  # noqa: E402
from cli_helpers import assert_user_error, run_cli  # noqa: E402

pytestmark = pytest.mark.slow
T = 5
H, W = preset_config("tiny").height, preset_config("tiny").width


def quiet(*_):
    pass


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict:
    """A random-weights tiny checkpoint, its loop-form ONNX, and two short synthetic camera videos."""
    root = tmp_path_factory.mktemp("serving")
    torch.manual_seed(0)
    cfg = preset_config("tiny", in_channels=1)
    run = save_checkpoint(root / "run", M2S2L(cfg), InputContract(H, W, 1, "stretch", 10.0, cfg.clip_len),
                          {"calibration": {"threshold": 3.0}})
    onnx_path = export_onnx(run, root / "tiny-loop.onnx", scan="loop").paths[0]
    videos = [root / "cam0.avi", root / "cam1.avi"]
    render_video_file(videos[0], seed=1, n_frames=36, events=("cyclist",))
    render_video_file(videos[1], seed=2, n_frames=28, events=())
    repo = root / "repo"
    package_repository(repo, "python", onnx=onnx_path, max_batch=8, threads=1)
    return {"run": run, "onnx": onnx_path, "videos": videos, "repo": repo, "root": root}


@pytest.fixture(scope="module")
def reference(model_files) -> dict:
    """Local runner scores per (video, target frame), from frames prepared here independently."""
    runner = OnnxRunner(model_files["onnx"], providers=["CPUExecutionProvider"], threads=1)
    ref = {}
    for v in model_files["videos"]:
        frames, fps = read_video(v)
        prepared = prepare_frames(frames, runner.contract)[resample_indices(len(frames), fps, runner.contract.fps)]
        targets = np.arange(T - 1, len(prepared))
        clips = np.stack([prepared[t - T + 1:t + 1] for t in targets])
        scores = np.concatenate([runner.infer(clips[i:i + 1])["frame_score"] for i in range(len(clips))])
        ref[str(v)] = dict(zip(targets.tolist(), scores.tolist()))
    return ref


@pytest.fixture(scope="module")
def repo_server(model_files):
    """The shipped tritonserver on the packaged python-backend repository."""
    server = TritonServerProcess(model_files["repo"])
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def pytriton_server(model_files):
    """PyTriton hosting the ONNX runner (what `m2s2l-deploy serve --onnx` runs)."""
    server = PyTritonServer(served_model(onnx=model_files["onnx"], threads=1), max_batch=8)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["repo", "pytriton"])
def any_server(request):
    """(endpoints, server pids, statistics token) of either server."""
    if request.param == "repo":
        s = request.getfixturevalue("repo_server")
        return s.endpoints, [s.pid], None
    s = request.getfixturevalue("pytriton_server")
    return s.endpoints, s.pids(), s.access_token


def assert_scores_match(report: dict, reference: dict) -> int:
    n = 0
    for s in report["per_stream"]:
        ref = reference[s["video"]]
        want = np.array([ref[f] for f in s["frames"]])
        np.testing.assert_allclose(s["scores"], want, rtol=1e-5, atol=1e-5)
        n += len(want)
    return n


# -- scores through each server equal the local runner ---------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_scores_through_server_equal_local_runner(any_server, model_files, reference, protocol):
    endpoints, _, _ = any_server
    url = endpoints.grpc_url if protocol == "grpc" else endpoints.http_url
    ref0 = reference[str(model_files["videos"][0])]
    threshold = None if protocol == "grpc" else float(np.median(list(ref0.values())))  # some frames above it
    report = bench_streams(model_files["videos"], url, 3, None, threshold, quiet, timeout_s=60)
    assert report["failed_requests"] == 0 and report["gaps"] == 0 and not report["stalled_streams"]
    for s in report["per_stream"]:      # one pass: every target of the stream's video exactly once
        assert sorted(s["frames"]) == sorted(reference[s["video"]])
    assert assert_scores_match(report, reference) == sum(len(reference[str(v)]) for v in
                                                         [model_files["videos"][k % 2] for k in range(3)])
    assert report["contract"]["fps"] == 10.0
    if threshold is None:
        assert report["threshold"] == 3.0 and report["threshold_source"] == "server"
    else:   # stream 0 plays video 0 from its first target: its alerts are those of the local scores
        from m2s2l_deploy.report.alerts import alert_events
        assert report["threshold_source"] == "argument"
        targets = sorted(ref0)
        want = [ev.to_dict() for ev in alert_events([ref0[t] for t in targets], threshold)]
        got = report["per_stream"][0]["alerts"]
        assert want and len(got) == len(want)
        for g, w in zip(got, want):
            assert g["start_frame"] == w["start_frame"] + targets[0] and g["end_frame"] == w["end_frame"] + targets[0]
            assert g["peak_score"] == pytest.approx(w["peak_score"], rel=1e-5, abs=1e-5)


# -- load: 8 streams, bounded time, no failures, batches > 1 in the server's own metrics -------------
def test_load_eight_streams_batches_without_failures(any_server, model_files, reference):
    endpoints, _, token = any_server
    before = batching_summary(endpoints.metrics_url, endpoints.http_url, "m2s2l", token)
    report = bench_streams(model_files["videos"], endpoints.grpc_url, 8, 6.0, None, quiet, timeout_s=60)
    after = settled(lambda: batching_summary(endpoints.metrics_url, endpoints.http_url, "m2s2l", token),
                    before["inference_count"] + report["requests_ok"])
    run = delta(after, before)
    assert report["failed_requests"] == 0 and report["gaps"] == 0 and not report["stalled_streams"]
    assert all(s["requests_ok"] > 0 for s in report["per_stream"])
    assert run["inference_count"] == report["requests_ok"] and run["request_failure"] == 0
    assert run["max_batch_seen"] > 1 and run["mean_batch"] > 1.0, run
    assert sum(int(k) * v for k, v in run["batch_sizes"].items()) == run["inference_count"]
    assert_scores_match(report, reference)     # batched answers went back to the right requests
    assert report["latency_ms"]["p99"] >= report["latency_ms"]["p50"] > 0


def test_settled_waits_for_the_server_to_count_the_last_answers():
    """Counters that catch up one read late are waited for; counters that never catch up are
    returned as they are after the timeout, so the caller's comparison fails instead of hanging."""
    reads = iter([{"inference_count": 148}, {"inference_count": 149}, {"inference_count": 150}])
    assert settled(lambda: next(reads), 150, timeout_s=5, poll_s=0)["inference_count"] == 150
    both = {"inference_count": 150, "batch_sizes": {"2": 74}}       # the statistics API lags: 148
    t0 = time.monotonic()
    assert settled(lambda: both, 150, timeout_s=0.3, poll_s=0.05) is both
    assert time.monotonic() - t0 >= 0.3


# -- loopback only --------------------------------------------------------------------------------
def _listening(pid: int) -> set[tuple[str, int]]:
    """The test's own /proc reading: (address, port) of pid's TCP sockets in LISTEN state."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:
                continue
            addr, port = f[1].split(":")
            raw = bytes.fromhex(addr)
            if v6:
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                ip = socket.inet_ntop(socket.AF_INET6, raw)
            else:
                ip = socket.inet_ntoa(raw[::-1])
            found.add((ip, int(port, 16)))
    return found


LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def test_servers_listen_on_loopback_only(any_server):
    endpoints, pids, _ = any_server
    assert pids
    found = set().union(*(_listening(p) for p in pids))
    assert {p for _, p in found} >= {endpoints.http_port, endpoints.grpc_port, endpoints.metrics_port}
    assert {ip for ip, _ in found} <= LOOPBACK, found


def test_socket_check_sees_other_addresses():
    """The check above can fail: a socket bound to another address is reported with that address."""
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        s.listen(1)
        found = _listening(os.getpid())
        assert ("127.0.0.2", s.getsockname()[1]) in found
        assert not {ip for ip, _ in found} <= {"127.0.0.1", "::ffff:127.0.0.1"}


# -- faults ------------------------------------------------------------------------------------------
def _run_in_thread(fn):
    box = {}
    th = threading.Thread(target=lambda: box.update(report=fn()), daemon=True)
    th.start()
    return th, box


def _http_post(url: str, body: bytes, headers=None) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_malformed_requests_get_errors_and_others_keep_going(repo_server, model_files, reference):
    e = repo_server.endpoints
    th, box = _run_in_thread(lambda: bench_streams(model_files["videos"], e.grpc_url, 4, 5.0, None, quiet, timeout_s=60))
    time.sleep(1.0)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{e.grpc_port}")
    bad = [(np.zeros((1, T, 1, H, W + 1), np.float32), "FP32", "unexpected shape"),
           (np.zeros((1, T - 1, 1, H, W), np.float32), "FP32", "unexpected shape"),
           (np.zeros((1, T, 1, H, W), np.float64), "FP64", "data-type"),
           (np.zeros((1, T, 1, H, W), np.int32), "INT32", "data-type")]
    for x, dtype, needle in bad:
        inp = grpcclient.InferInput("clip", list(x.shape), dtype)
        inp.set_data_from_numpy(x)
        with pytest.raises(Exception, match=needle):
            client.infer("m2s2l", [inp], client_timeout=30)
    infer_url = f"{e.http_url}/v2/models/m2s2l/infer"
    assert _http_post(infer_url, b"\x00\xff garbage {{{") >= 400
    header = json.dumps({"inputs": [{"name": "clip", "shape": [1, T, 1, H, W], "datatype": "FP32",
                                     "parameters": {"binary_data_size": T * H * W * 4}}]}).encode()
    assert _http_post(infer_url, header + b"\x00" * 100, {"Inference-Header-Content-Length": str(len(header))}) == 400
    with socket.create_connection(("127.0.0.1", e.grpc_port), timeout=10) as raw:   # not HTTP/2 at all
        raw.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)))
    th.join(timeout=120)
    report = box["report"]
    assert report["failed_requests"] == 0 and report["gaps"] == 0 and not report["stalled_streams"]
    assert all(s["requests_ok"] > 0 for s in report["per_stream"])
    assert_scores_match(report, reference)
    x = np.stack([np.zeros((T, 1, H, W), np.float32)])
    inp = grpcclient.InferInput("clip", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    assert np.isfinite(client.infer("m2s2l", [inp], client_timeout=30).as_numpy("frame_score")).all()
    client.close()


def test_disconnecting_client_does_not_stall_the_rest(pytriton_server, model_files, reference):
    e = pytriton_server.endpoints
    th, box = _run_in_thread(lambda: bench_streams(model_files["videos"], e.grpc_url, 4, 6.0, None, quiet, timeout_s=60))
    time.sleep(1.0)
    t_rogue = time.monotonic()
    x = np.zeros((1, T, 1, H, W), np.float32)
    for _ in range(3):     # a client that sends a request and goes away before the answer
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{e.grpc_port}")
        inp = grpcclient.InferInput("clip", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        c.async_infer("m2s2l", [inp], callback=lambda *_: None)
        c.close()
    body = json.dumps({"inputs": [{"name": "clip", "shape": [1, T, 1, H, W], "datatype": "FP32",
                                   "data": [0.0] * 100}]}).encode()
    with socket.create_connection(("127.0.0.1", e.http_port), timeout=10) as raw:    # half a request, then gone
        raw.sendall(b"POST /v2/models/m2s2l/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body) * 4}\r\n\r\n".encode() + body)
    with socket.create_connection(("127.0.0.1", e.http_port), timeout=10):
        pass
    rogue_s = time.monotonic() - t_rogue
    th.join(timeout=120)
    report = box["report"]
    assert report["failed_requests"] == 0 and report["gaps"] == 0 and not report["stalled_streams"]
    assert rogue_s < 3.0
    for s in report["per_stream"]:       # every stream kept being answered well after the rogue clients left
        assert any(t > 4.0 for t in s["sent_s"]), s["sent_s"][-5:]
    assert_scores_match(report, reference)
    assert pytriton_server.triton.is_alive()


def test_restart_mid_run_reports_gap_and_resumes(model_files, reference):
    """Stop the server under 4 streams, start it again on the same ports: each stream reports a gap and goes on."""
    server = TritonServerProcess(model_files["repo"], Endpoints.choose())
    try:
        server.start()
        th, box = _run_in_thread(lambda: bench_streams(model_files["videos"], server.endpoints.grpc_url, 4, 10.0, None,
                                                       quiet, timeout_s=30, reconnect_timeout_s=60))
        time.sleep(2.5)
        t_stop = time.monotonic()
        server.stop()
        time.sleep(0.5)
        server.start()
        down_s = time.monotonic() - t_stop
        th.join(timeout=150)
        report = box["report"]
    finally:
        server.close()
    assert report["failed_requests"] == 0 and not report["stalled_streams"] and not report["aborted_streams"]
    assert report["gaps"] == 4
    for s in report["per_stream"]:
        (gap,) = s["gaps"]
        assert gap["resumed"] and 0 < gap["seconds"] <= down_s + 2.0
        assert any(t < gap["start_s"] for t in s["sent_s"]) and any(t >= gap["end_s"] for t in s["sent_s"])
    assert_scores_match(report, reference)     # the clip in flight at the stop was resent, answers still right


def test_watch_scores_through_the_server(pytriton_server, model_files, reference):
    """`watch --server`: a camera file scored through the server equals the local runner on the same clips."""
    from m2s2l_deploy.data.sources import parse_source
    from m2s2l_deploy.jobs.watch import SourcePlan, Watch, WatchOptions
    from m2s2l_deploy.serving.client import ServerRunner, describe_server

    video = model_files["videos"][0]
    model = describe_server(pytriton_server.endpoints.grpc_url)
    records = []
    job = Watch([SourcePlan(parse_source(video))], lambda: ServerRunner(model), WatchOptions(batch=3, warmup=0),
                on_frame=lambda name, r: records.append(r), log=quiet)
    summary = job.run(threading.Event(), tick_s=0.1)
    ref = reference[str(video)]
    decided = [r for r in records if r["decidable"]]
    assert [r["frame"] for r in decided] == sorted(ref)
    np.testing.assert_allclose([r["score"] for r in decided], [ref[r["frame"]] for r in decided], rtol=1e-5, atol=1e-5)
    src = summary["sources"][0]
    assert src["threshold"] == 3.0 and src["threshold_source"] == "server model config"
    assert summary["runner"]["runner"] == "triton-grpc" and src["state"] == "ended"


def test_watch_cli_with_server(pytriton_server, model_files, tmp_path):
    url, video = pytriton_server.endpoints.http_url, model_files["videos"][1]
    proc = run_cli("watch", video, "--server", url, "--json", tmp_path / "w.json", "--threshold", "none")
    assert proc.returncode == 0, proc.stderr
    src = json.loads((tmp_path / "w.json").read_text())["sources"][0]
    assert src["scored"] == len(read_video(video)[0]) and src["threshold"] is None and summary_ok(src)
    assert_user_error(run_cli("watch", video, "--server", url, "--onnx", model_files["onnx"]), "cannot be used with --server")
    assert_user_error(run_cli("watch", video, "--server", url, "--roi", video), "--roi")


def summary_ok(src: dict) -> bool:
    return src["opened"] and src["dropped"] == 0 and src["gaps"] == [] and src["latency_ms"]["n"] == src["scored"]


# -- the CLI starts and stops a real server ----------------------------------------------------------
def test_cli_serve_starts_serves_and_stops(model_files, tmp_path):
    """`serve --checkpoint` (the PyTorch runner behind PyTriton): ready, loopback, same scores as TorchRunner, SIGINT stops it."""
    from m2s2l_deploy.runners import TorchRunner

    ep_file = tmp_path / "endpoints.json"
    proc = subprocess.Popen([sys.executable, "-m", "m2s2l_deploy.cli", "serve", "--checkpoint", str(model_files["run"]),
                             "--port", "0", "--max-batch", "4", "--threads", "1", "--json", str(ep_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ep_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.25)
        assert ep_file.exists(), proc.communicate(timeout=30)
        ep = json.loads(ep_file.read_text())
        with urllib.request.urlopen(ep["health_url"], timeout=10) as r:
            assert r.status == 200
        assert {ip for ip, _ in ep["listening"]} <= LOOPBACK
        pids = ep["server_pids"]
        assert pids and set().union(*(_listening(p) for p in pids)) == {tuple(a) for a in ep["listening"]}
        video = model_files["videos"][1]
        report = bench_streams([video], ep["grpc_url"], 2, None, None, quiet, timeout_s=60)
        assert report["failed_requests"] == 0 and report["requests_ok"] == 2 * (28 - T + 1)
        torch_runner = TorchRunner(model_files["run"])
        frames, _ = read_video(video)
        prepared = prepare_frames(frames, torch_runner.contract)
        for s in report["per_stream"]:
            want = [float(torch_runner.infer(prepared[t - T + 1:t + 1][None])["frame_score"][0]) for t in s["frames"]]
            np.testing.assert_allclose(s["scores"], want, rtol=1e-5, atol=1e-5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "server stopped" in out
        assert not any(Path(f"/proc/{p}").exists() for p in pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_cli_serve_errors(model_files, tmp_path):
    assert_user_error(run_cli("serve"), "exactly one of")
    assert_user_error(run_cli("serve", "--onnx", model_files["onnx"], "--checkpoint", model_files["run"]), "exactly one of")
    assert_user_error(run_cli("serve", "--onnx", tmp_path / "none.onnx", "--port", "0"), "does not exist")
    assert_user_error(run_cli("serve", "--onnx", model_files["onnx"], "--host", "localhost:80"), "IPv4 address")
    assert_user_error(run_cli("serve", "--onnx", model_files["onnx"], "--port", "70000"), "between 1 and 65535")
    ort_repo = tmp_path / "ortrepo"
    package_repository(ort_repo, "onnxruntime", onnx=model_files["onnx"])
    assert_user_error(run_cli("serve", "--repository", ort_repo, "--port", "0"), "only the Python backend")
    assert_user_error(run_cli("serve", "--repository", tmp_path / "empty", "--port", "0"), "does not exist")


def test_bench_streams_errors(model_files):
    port = free_port()      # nothing listens there
    with pytest.raises(UserError, match="no ready model"):
        bench_streams(model_files["videos"], f"grpc://127.0.0.1:{port}", 2, 1.0, None, quiet, wait_s=1.0)
    with pytest.raises(UserError, match="grpc://HOST:PORT"):
        bench_streams(model_files["videos"], "ftp://127.0.0.1:1", 2, 1.0, None, quiet)
    with pytest.raises(UserError, match="--streams"):
        bench_streams(model_files["videos"], f"127.0.0.1:{port}", 0, 1.0, None, quiet)
    with pytest.raises(UserError, match="--duration"):
        bench_streams(model_files["videos"], f"127.0.0.1:{port}", 1, -1.0, None, quiet)
