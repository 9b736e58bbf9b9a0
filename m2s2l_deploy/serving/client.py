"""N camera streams against a Triton server: scores, alerts, throughput, latency, failures, gaps;
and ``ServerRunner``, a served model as a Runner (``watch --server``).

``bench_streams`` plays video files as concurrent camera streams (one thread and one tritonclient
connection each). Each stream sends one clip per target frame — the last T prepared frames, exactly
as the local runners see them — and waits for its score before sending the next (closed loop: the
load a fleet of cameras puts on a server that keeps up with them). Streams that share a video start
at evenly spaced frames, so a dynamic batch mixes different clips and a mix-up of responses would show.

Failures are kept apart:
- a **failed request** is an error response from a reachable server (counted, the stream goes on);
- a **gap** is the server going away (connection refused / unavailable / stopping): the stream
  records when, polls the server with fresh connections until the model is ready again (bounded by
  ``reconnect_timeout_s``), then resends the same clip and carries on, so no clip of the file is lost.

Frames are decoded and prepared once per video before the clock starts (the input contract, read
from the model config's ``m2s2l_contract`` parameter, says how), so the numbers measure the server.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from ..contract import InputContract, prepare_frames, resample_indices
from ..errors import DataError, UserError
from ..runners.base import Runner
from ..urls import redact
from . import MODEL_NAME, require

MAX_STREAMS = 256
MAX_DURATION_S = 24 * 3600.0
MAX_PREPARED_BYTES = 2 << 30      # frames are prepared once per video and kept in memory
_CONNECTION_WORDS = ("unavailable", "connection refused", "failed to connect", "socket closed", "stopping",
                     "connection reset", "broken pipe", "not ready", "unknown model", "is not found")


def parse_url(url: str) -> tuple[str, str]:
    """(protocol, host:port) from grpc://h:p, http://h:p, or h:p (gRPC, Triton's usual :8001)."""
    text = str(url).strip()
    if "://" not in text:
        text = "grpc://" + text
    u = urlparse(text)
    if u.scheme not in ("grpc", "http") or not u.hostname or u.port is None:
        raise UserError(f"--server must look like grpc://HOST:PORT or http://HOST:PORT, got '{redact(text)}'")
    return u.scheme, f"{u.hostname}:{u.port}"


class Connection:
    """One tritonclient connection (gRPC or HTTP) with the few calls a stream needs."""

    def __init__(self, protocol: str, address: str, timeout_s: float):
        self.protocol, self.timeout_s = protocol, timeout_s
        if protocol == "grpc":
            self.mod = require("tritonclient.grpc", "streaming to a Triton server")
            self.client = self.mod.InferenceServerClient(url=address)
        else:
            self.mod = require("tritonclient.http", "streaming to a Triton server")
            self.client = self.mod.InferenceServerClient(url=address, connection_timeout=timeout_s,
                                                         network_timeout=timeout_s)

    def ready(self, model: str) -> bool:
        try:
            return bool(self.client.is_server_ready() and self.client.is_model_ready(model))
        except Exception:  # noqa: BLE001  (any failure here just means "not yet")
            return False

    def config(self, model: str) -> dict:
        if self.protocol == "grpc":
            return self.client.get_model_config(model, as_json=True)["config"]
        return self.client.get_model_config(model)

    def infer(self, model: str, clip: np.ndarray, input_name: str = "clip") -> np.ndarray:
        inp = self.mod.InferInput(input_name, list(clip.shape), "FP32")
        inp.set_data_from_numpy(clip)
        want = [self.mod.InferRequestedOutput("frame_score")]
        if self.protocol == "grpc":
            res = self.client.infer(model, [inp], outputs=want, client_timeout=self.timeout_s)
        else:
            res = self.client.infer(model, [inp], outputs=want)
        return np.asarray(res.as_numpy("frame_score"), dtype=np.float64).reshape(-1)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001  (closing a dead connection may raise; nothing to do)
            pass


def is_connection_error(exc: BaseException) -> bool:
    """True when the server went away (as opposed to answering with an error)."""
    try:
        from tritonclient.utils import InferenceServerException
    except ImportError:  # pragma: no cover
        InferenceServerException = ()
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        text = f"{status} {exc.message()}".lower()
        if "deadline" in text:
            return False
        return status.endswith("UNAVAILABLE") or any(w in text for w in _CONNECTION_WORDS)
    return isinstance(exc, (OSError, EOFError)) or type(exc).__module__.startswith(("geventhttpclient", "gevent"))


# -- the model behind the URL ----------------------------------------------------------------------
@dataclass
class ServerModel:
    protocol: str
    address: str
    name: str
    contract: InputContract
    input_name: str
    max_batch: int
    threshold: float | None
    notes: list[str] = field(default_factory=list)


def describe_server(url: str, model: str = MODEL_NAME, wait_s: float = 10.0, timeout_s: float = 30.0) -> ServerModel:
    """Contact the server, wait (bounded) for the model, read its input contract and threshold."""
    protocol, address = parse_url(url)
    conn = Connection(protocol, address, timeout_s)
    try:
        deadline = time.monotonic() + wait_s
        while not conn.ready(model):
            if time.monotonic() > deadline:
                raise UserError(f"no ready model '{model}' at {redact(str(url))} after {wait_s:.0f} s "
                                "(is the server running? `m2s2l-deploy serve` starts one)")
            time.sleep(0.25)
        cfg = conn.config(model)
    finally:
        conn.close()
    params = {k: (v.get("string_value") if isinstance(v, dict) else v) for k, v in cfg.get("parameters", {}).items()}
    inp = cfg["input"][0]
    dims = [int(d) for d in inp.get("dims", [])]
    notes = []
    if params.get("m2s2l_contract"):
        import json
        contract = InputContract.from_dict(json.loads(params["m2s2l_contract"]))
    elif len(dims) == 4:
        contract = InputContract(height=dims[2], width=dims[3], channels=dims[1], clip_len=dims[0])
        notes.append("the model config carries no input contract: stretch resize and the video's own frame rate assumed")
    else:
        raise UserError(f"model '{model}' at {redact(str(url))} does not take clips (T, C, H, W): input dims {dims}")
    want = [contract.clip_len, contract.channels, contract.height, contract.width]
    if dims and dims != want:
        raise UserError(f"model '{model}' at {redact(str(url))} takes {dims}, but its contract says {want}")
    thr = params.get("m2s2l_threshold")
    return ServerModel(protocol, address, model, contract, inp["name"], int(cfg.get("max_batch_size", 0)),
                       float(thr) if thr not in (None, "") else None, notes)


class ServerRunner(Runner):
    """A model served by a running Triton server, as a Runner: ``watch --server URL`` scores through it.

    Its contract and threshold are the ones the server's model config carries (``describe_server``);
    each runner holds one connection (``watch`` makes one per source). Clips go in requests of up to
    the model's max batch; only ``frame_score`` comes back (no score map: no overlay on snapshots, no
    region of interest). When the server goes away, the call waits for it (polling with fresh
    connections, at most ``reconnect_timeout_s``) and resends; then it gives up with a UserError.
    A connection serves the thread that made it (tritonclient's HTTP client is not thread-safe), so
    a call from another thread (``watch`` warms up in one, scores in another) opens its own.
    """

    def __init__(self, server: ServerModel, timeout_s: float = 30.0, reconnect_timeout_s: float = 60.0):
        self.server, self.timeout_s, self.reconnect_timeout_s = server, timeout_s, reconnect_timeout_s
        self.name = f"triton-{server.protocol}"
        self.contract = server.contract
        self.precision, self.precision_source = None, "the server's model"
        if server.threshold is not None:
            self.threshold, self.threshold_source = server.threshold, "server model config"
        self.conn, self._owner = None, None

    def _connection(self) -> Connection:
        if self.conn is None or self._owner != threading.get_ident():
            self.conn = Connection(self.server.protocol, self.server.address, self.timeout_s)
            self._owner = threading.get_ident()
        return self.conn

    def _infer(self, clips: np.ndarray) -> dict[str, np.ndarray]:
        step = max(1, self.server.max_batch)
        scores = [self._request(np.ascontiguousarray(clips[i:i + step], dtype=np.float32))
                  for i in range(0, len(clips), step)]
        return {"frame_score": np.concatenate(scores).astype(np.float32)}

    def _request(self, clips: np.ndarray) -> np.ndarray:
        srv = self.server
        deadline = None
        while True:
            try:
                return self._connection().infer(srv.name, clips, srv.input_name)
            except Exception as exc:  # noqa: BLE001  (classified: a gone server is waited for, the rest raised)
                if not is_connection_error(exc):
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    raise UserError(f"the server at {srv.protocol}://{srv.address} refused a request: "
                                    f"{first[:200]}") from None
            deadline = deadline or time.monotonic() + self.reconnect_timeout_s
            while True:
                self.conn.close()
                self.conn = None
                if time.monotonic() > deadline:
                    raise UserError(f"the server at {srv.protocol}://{srv.address} has been unreachable for "
                                    f"{self.reconnect_timeout_s:g} s")
                time.sleep(0.5)
                if self._connection().ready(srv.name):
                    break

    def describe(self) -> dict:
        return {"runner": self.name, "server": f"{self.server.protocol}://{self.server.address}",
                "model": self.server.name}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def load_stream_frames(path, contract: InputContract, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """A video decoded, resampled to the contract's frame rate and prepared: (N, C, H, W) float32, fps."""
    from ..data.video import iter_video, video_info

    path = Path(path)
    info = video_info(path)
    fps = info["fps"]
    n = min(info["n_frames"], max_frames or info["n_frames"])
    need = n * contract.channels * contract.height * contract.width * 4
    if need > MAX_PREPARED_BYTES:
        raise UserError(f"{path}: {n} prepared frames would take {need / 2**30:.1f} GiB in memory; "
                        "limit them with --max-frames (streams loop the video)")
    prepared = np.stack([prepare_frames(frame, contract)[0] for _, frame in iter_video(path, max_frames)])
    keep = resample_indices(len(prepared), fps, contract.fps)
    if len(keep) != len(prepared):
        prepared = prepared[keep]
    if len(prepared) < contract.clip_len:
        raise DataError(f"{path} has {len(prepared)} frames at {contract.fps or fps:g} fps, "
                        f"fewer than one clip of {contract.clip_len}")
    return np.ascontiguousarray(prepared), float(contract.fps or fps)


# -- one stream --------------------------------------------------------------------------------------
@dataclass
class _Stream:
    index: int
    video: Path
    frames: np.ndarray
    offset: int                                  # first target's position among the video's targets
    frames_idx: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    loops: list = field(default_factory=list)
    latencies: list = field(default_factory=list)
    sent_s: list = field(default_factory=list)   # when each answered clip was sent, from the run's start
    failed: int = 0
    errors: list = field(default_factory=list)
    gaps: list = field(default_factory=list)
    aborted: str | None = None
    passes: int = 0


class _Run:
    """Shared state of one bench: clock, stop flag, options."""

    def __init__(self, server: ServerModel, duration_s, timeout_s, reconnect_timeout_s, pace_fps, log, stop_event):
        self.server, self.duration_s, self.timeout_s = server, duration_s, timeout_s
        self.reconnect_timeout_s, self.pace_fps, self.log = reconnect_timeout_s, pace_fps, log
        self.stop = stop_event or threading.Event()
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def over(self) -> bool:
        return self.stop.is_set() or (self.duration_s is not None and self.now() >= self.duration_s)


def _reconnect(run: _Run, s: _Stream, exc: BaseException) -> "Connection | None":
    """Poll with fresh connections until the model is ready again; record the gap. None = give up."""
    srv = run.server
    start = run.now()
    run.log(f"stream {s.index}: server unreachable at {start:.1f} s ({type(exc).__name__}); reconnecting")
    retries = 0
    while True:
        if run.over():
            s.gaps.append({"start_s": round(start, 3), "end_s": None, "seconds": round(run.now() - start, 3),
                           "retries": retries, "resumed": False})
            return None
        if run.now() - start > run.reconnect_timeout_s:
            s.gaps.append({"start_s": round(start, 3), "end_s": None, "seconds": round(run.now() - start, 3),
                           "retries": retries, "resumed": False})
            s.aborted = f"server unreachable for more than {run.reconnect_timeout_s:g} s"
            run.log(f"stream {s.index}: giving up, {s.aborted}")
            return None
        time.sleep(0.2)
        retries += 1
        conn = Connection(srv.protocol, srv.address, run.timeout_s)
        if conn.ready(srv.name):
            end = run.now()
            s.gaps.append({"start_s": round(start, 3), "end_s": round(end, 3), "seconds": round(end - start, 3),
                           "retries": retries, "resumed": True})
            run.log(f"stream {s.index}: resumed at {end:.1f} s after a {end - start:.1f} s gap")
            return conn
        conn.close()


def _stream_worker(run: _Run, s: _Stream) -> None:
    srv, T = run.server, run.server.contract.clip_len
    targets = np.arange(T - 1, len(s.frames))
    order = np.concatenate([targets[s.offset:], targets[:s.offset]])   # one pass = every target once
    conn = Connection(srv.protocol, srv.address, run.timeout_s)
    try:
        pos, loop = 0, 0
        next_send = time.monotonic()
        while not run.over():
            if pos == len(order):
                s.passes += 1
                if run.duration_s is None:
                    break
                # Looping: the camera "restarts" at the video's beginning (fresh history window).
                order, pos, loop = targets, 0, loop + 1
            t = int(order[pos])
            clip = s.frames[t - T + 1:t + 1][None]
            if run.pace_fps:
                time.sleep(max(0.0, next_send - time.monotonic()))
                next_send = max(next_send + 1.0 / run.pace_fps, time.monotonic() - 1.0)
            t_send = time.perf_counter()
            sent_at = run.now()
            try:
                score = conn.infer(srv.name, clip, srv.input_name)
            except Exception as exc:  # noqa: BLE001  (classified below; the stream must survive)
                if is_connection_error(exc):
                    conn.close()
                    conn = _reconnect(run, s, exc)
                    if conn is None:
                        return
                    continue                      # resend the same clip
                s.failed += 1
                if len(s.errors) < 5:
                    s.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                pos += 1
                continue
            s.latencies.append(time.perf_counter() - t_send)
            s.sent_s.append(round(sent_at, 4))
            s.frames_idx.append(t)
            s.scores.append(float(score[0]))
            s.loops.append(loop)
            pos += 1
    finally:
        if conn is not None:
            conn.close()


# -- summary -------------------------------------------------------------------------------------------
def _percentiles_ms(seconds) -> dict:
    if not len(seconds):
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    a = np.asarray(seconds) * 1000.0
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3),
            "mean": round(float(a.mean()), 3), "max": round(float(a.max()), 3)}


def _segments(frames: list[int], loops: list[int]):
    """Runs of consecutive target frames within one pass: each is a stretch of live video for alerts."""
    start = 0
    for i in range(1, len(frames) + 1):
        if i == len(frames) or loops[i] != loops[start] or frames[i] != frames[i - 1] + 1:
            yield start, i
            start = i


def _stream_alerts(s: _Stream, threshold: float | None, fps: float, alert_options: dict) -> list[dict] | None:
    if threshold is None or not s.scores:
        return None
    from ..report.alerts import alert_events

    events = []
    for a, b in _segments(s.frames_idx, s.loops):
        base = s.frames_idx[a]
        for ev in alert_events(np.asarray(s.scores[a:b]), threshold, **alert_options):
            d = ev.to_dict()
            for key in ("start_frame", "end_frame", "peak_frame", "raised_frame"):
                d[key] += base
            d["loop"] = s.loops[a]
            if fps:
                for key in ("start", "end", "peak", "raised"):
                    d[f"{key}_s"] = round(d[f"{key}_frame"] / fps, 3)
            events.append(d)
    return events


def bench_streams(videos: list[Path], url: str, streams: int, duration_s: float | None, threshold: float | None,
                  log, *, model: str = MODEL_NAME, max_frames: int | None = None, timeout_s: float = 30.0,
                  reconnect_timeout_s: float = 60.0, pace_fps: float | None = None, wait_s: float = 10.0,
                  min_frames: int | None = None, merge_gap: int | None = None, metrics_url: str | None = None,
                  stop_event: threading.Event | None = None) -> dict:
    """Run ``streams`` concurrent camera streams from ``videos`` against the server at ``url``.

    duration_s: run that long, looping videos (None: each stream plays its video once). threshold:
    alert threshold (None: the server model's calibrated one, if its config carries it). log: a
    print-like callable. Returns a JSON-able report (module docstring; keys ``throughput_clips_per_s``,
    ``latency_ms``, ``failed_requests``, ``gaps``, ``per_stream`` with scores and alerts).
    """
    videos = [Path(v) for v in videos]
    if not videos:
        raise UserError("give at least one video file")
    if not 1 <= int(streams) <= MAX_STREAMS:
        raise UserError(f"--streams must be between 1 and {MAX_STREAMS}, got {streams}")
    if duration_s is not None and not 0 < float(duration_s) <= MAX_DURATION_S:
        raise UserError(f"--duration must be between 0 and {MAX_DURATION_S:g} seconds, got {duration_s}")
    if pace_fps is not None and pace_fps <= 0:
        raise UserError(f"pace must be a positive frame rate, got {pace_fps}")
    if max_frames is not None and max_frames < 1:
        raise UserError(f"--max-frames must be >= 1, got {max_frames}")
    for v in videos:
        if not v.is_file():
            raise DataError(f"video file not found: {v}")
    server = describe_server(url, model, wait_s=wait_s, timeout_s=timeout_s)
    for note in server.notes:
        log(f"note: {note}")
    thr_source = "argument" if threshold is not None else "server" if server.threshold is not None else "none"
    threshold = threshold if threshold is not None else server.threshold

    prepared = {}
    for v in dict.fromkeys(videos):
        prepared[v] = load_stream_frames(v, server.contract, max_frames)
    per_video = {}
    plan = []
    for k in range(int(streams)):
        v = videos[k % len(videos)]
        per_video.setdefault(v, []).append(k)
        plan.append(v)
    T = server.contract.clip_len
    stream_objs = []
    for k, v in enumerate(plan):
        frames, _ = prepared[v]
        peers = per_video[v]
        n_targets = len(frames) - T + 1
        offset = (peers.index(k) * n_targets) // len(peers)
        stream_objs.append(_Stream(k, v, frames, offset))

    log(f"{streams} stream(s) from {len(prepared)} video(s) -> {server.protocol}://{server.address} model "
        f"'{server.name}' (max batch {server.max_batch}), "
        + (f"{duration_s:g} s" if duration_s is not None else "one pass each"))
    before = None
    if metrics_url:
        from .stats import read_metrics
        try:
            before = read_metrics(metrics_url, server.name)
        except OSError:
            before = None
    run = _Run(server, duration_s, timeout_s, reconnect_timeout_s, pace_fps, log, stop_event)
    threads = [threading.Thread(target=_stream_worker, args=(run, s), name=f"m2s2l-stream-{s.index}", daemon=True)
               for s in stream_objs]
    for th in threads:
        th.start()
    # Bounded wait: every request has its own timeout and every gap its own limit.
    longest_pass = max(len(f) for f, _ in prepared.values()) * (timeout_s + 1.0)
    limit = (duration_s if duration_s is not None else longest_pass) + reconnect_timeout_s + timeout_s + 30.0
    try:
        for th in threads:
            th.join(timeout=max(0.0, limit - run.now()))
    except KeyboardInterrupt:
        run.stop.set()
        for th in threads:
            th.join(timeout=timeout_s + 5.0)
    run.stop.set()
    stalled = [th.name for th in threads if th.is_alive()]
    elapsed = run.now()

    fps = {v: f for v, (_, f) in prepared.items()}
    alert_options = {k: v for k, v in (("min_frames", min_frames), ("merge_gap", merge_gap)) if v is not None}
    per_stream, all_lat = [], []
    for s in stream_objs:
        all_lat += s.latencies
        per_stream.append({
            "stream": s.index, "video": str(s.video), "requests_ok": len(s.scores), "failed_requests": s.failed,
            "errors": s.errors, "passes": s.passes, "first_frame": int(s.offset + T - 1),
            "latency_ms": _percentiles_ms(s.latencies), "gaps": s.gaps, "aborted": s.aborted,
            "frames": s.frames_idx, "loops": s.loops, "scores": s.scores, "sent_s": s.sent_s,
            "alerts": _stream_alerts(s, threshold, fps[s.video], alert_options),
        })
    ok = sum(p["requests_ok"] for p in per_stream)
    report = {
        "server": url, "protocol": server.protocol, "model": server.name, "streams": int(streams),
        "duration_s": duration_s, "elapsed_s": round(elapsed, 3), "mode": "closed loop" if not pace_fps else f"paced {pace_fps:g} fps",
        "videos": [{"path": str(v), "frames": int(len(f)), "fps": fp, "clips": int(len(f) - T + 1)}
                   for v, (f, fp) in prepared.items()],
        "contract": server.contract.to_dict(), "threshold": threshold, "threshold_source": thr_source,
        "requests_ok": ok, "failed_requests": sum(p["failed_requests"] for p in per_stream),
        "throughput_clips_per_s": round(ok / elapsed, 3) if elapsed > 0 else None,
        "latency_ms": _percentiles_ms(all_lat),
        "gaps": sum(len(p["gaps"]) for p in per_stream),
        "gap_seconds_max": max((g["seconds"] for p in per_stream for g in p["gaps"]), default=0.0),
        "aborted_streams": [p["stream"] for p in per_stream if p["aborted"]],
        "stalled_streams": stalled, "notes": server.notes, "per_stream": per_stream,
    }
    if before is not None:
        from .stats import read_metrics, settled
        try:
            after = settled(lambda: read_metrics(metrics_url, server.name), before["inference_count"] + ok)
            clips = after["inference_count"] - before["inference_count"]
            execs = after["execution_count"] - before["execution_count"]
            report["server_batching"] = {"inference_count": clips, "execution_count": execs,
                                         "mean_batch": clips / execs if execs else None}
        except OSError:
            pass
    log(f"{ok} clips in {elapsed:.1f} s = {report['throughput_clips_per_s']} clips/s, p50 "
        f"{report['latency_ms']['p50']} ms, p99 {report['latency_ms']['p99']} ms, "
        f"{report['failed_requests']} failed, {report['gaps']} gap(s)")
    return report
