"""Serving on Triton Inference Server (CPU): concurrent camera streams vs one local runner.

Why: what does a real server buy under load? One local ONNX Runtime runner scoring one
camera (one clip per frame, batch 1) is the baseline; then the same ONNX behind the shipped
tritonserver (packaged python-backend repository) and behind PyTriton, each loaded by N concurrent
streams (closed loop: each stream sends its next clip when the last one is answered) for a bounded
time. Throughput, latency p50/p99 and failed requests come from the client (``bench_streams``);
the batch sizes come from the server itself (statistics API and Prometheus metrics). Weights are
random unless --onnx is given (speed does not depend on the weights). Everything runs on 127.0.0.1.

    python benchmarks/bench_serving.py [--video V] [--seconds 20] [--streams 8] [--write docs/benchmarks.md]

With --write it appends (or, on a rerun, replaces) the section "Serving on Triton Inference Server (CPU)".
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from m2s2l_deploy.contract import InputContract
from m2s2l_deploy.runners.onnx_runner import OnnxRunner
from m2s2l_deploy.serving.client import bench_streams, load_stream_frames
from m2s2l_deploy.serving.repository import package_repository
from m2s2l_deploy.serving.process import TritonServerProcess
from m2s2l_deploy.serving.server import PyTritonServer, served_model
from m2s2l_deploy.serving.stats import batching_summary, delta

from _common import machine, write_section

SECTION = "## Serving on Triton Inference Server (CPU)"
VTEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "vtest.avi"


def random_onnx(root: Path) -> Path:
    import torch

    from m2s2l_deploy.model import M2S2L, preset_config
    from m2s2l_deploy.model.checkpoint import save_checkpoint
    from m2s2l_deploy.export.exporter import export_onnx

    torch.manual_seed(0)
    cfg = preset_config("tiny", in_channels=1)
    run = save_checkpoint(root / "run", M2S2L(cfg), InputContract(cfg.height, cfg.width, 1, "stretch", None,
                                                                   cfg.clip_len), {})
    return export_onnx(run, root / "tiny-loop.onnx", scan="loop").paths[0]


def local_runner(onnx: Path, video: Path, seconds: float, threads: int, batch: int, max_frames: int) -> dict:
    """One runner in this process, clips in frame order, ``batch`` clips per call, for ``seconds``."""
    runner = OnnxRunner(onnx, providers=["CPUExecutionProvider"], threads=threads)
    frames, _ = load_stream_frames(video, runner.contract, max_frames)
    T = runner.contract.clip_len
    clips = np.stack([frames[t - T + 1:t + 1] for t in range(T - 1, len(frames))])
    for i in range(3):
        runner.infer(clips[i * batch:(i + 1) * batch])
    lat, n, pos = [], 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if pos + batch > len(clips):
            pos = 0
        t1 = time.perf_counter()
        runner.infer(clips[pos:pos + batch])
        lat.append(time.perf_counter() - t1)
        n += batch
        pos += batch
    elapsed = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    return {"clips": n, "seconds": elapsed, "clips_per_s": n / elapsed, "clip_len": T,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def server_run(endpoints, token, video: Path, streams: int, seconds: float, max_frames: int) -> dict:
    before = batching_summary(endpoints.metrics_url, endpoints.http_url, "m2s2l", token)
    rep = bench_streams([video], endpoints.grpc_url, streams, seconds, None, lambda *_: None,
                        max_frames=max_frames, timeout_s=60)
    after = batching_summary(endpoints.metrics_url, endpoints.http_url, "m2s2l", token)
    return {"clips": rep["requests_ok"], "seconds": rep["elapsed_s"], "clips_per_s": rep["throughput_clips_per_s"],
            "p50_ms": rep["latency_ms"]["p50"], "p99_ms": rep["latency_ms"]["p99"],
            "failed": rep["failed_requests"], "gaps": rep["gaps"], "batching": delta(after, before)}


def fmt_sizes(sizes: dict) -> str:
    return ", ".join(f"{k}:{v}" for k, v in sorted(sizes.items(), key=lambda kv: int(kv[0])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", type=Path, help="whole-graph ONNX export (default: random-weights tiny, loop form)")
    ap.add_argument("--video", type=Path, default=VTEST if VTEST.exists() else None)
    ap.add_argument("--max-frames", type=int, default=200, help="frames decoded from the video (looped)")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed load per configuration")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per runner/instance")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--write", type=Path, help="Markdown file to append/replace the section in")
    ap.add_argument("--from-json", type=Path, help="render --write from a previous --json result instead of measuring")
    args = ap.parse_args()
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        if args.write:
            write_section(args.write, SECTION, markdown(result, argparse.Namespace(**result["args"]), Path(result["video"]),
                                               result.get("date")))
        return

    t_start = time.perf_counter()
    info = machine("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        root = Path(tmp)
        video = args.video
        if video is None:
            from m2s2l_deploy.data.synth import render_video_file
            video = root / "cam.avi"
            render_video_file(video, seed=1, n_frames=120)
        onnx = args.onnx or random_onnx(root)
        rows = []

        def add(name, streams, r, baseline=None):
            r = {"config": name, "streams": streams, **r}
            if baseline is not None:
                r["baseline_clips_per_s"] = baseline["clips_per_s"]
            rows.append(r)
            print(f"{name:55s} {streams:3d} streams  {r['clips_per_s']:7.2f} clips/s  p50 {r['p50_ms']:8.1f} ms  "
                  f"p99 {r['p99_ms']:8.1f} ms  " + (f"mean batch {r['batching']['mean_batch']:.2f}" if "batching" in r else ""),
                  flush=True)

        def baseline():
            """One local runner, batch 1, measured right before a server row (the machine's load drifts)."""
            return local_runner(onnx, video, args.seconds, args.threads, 1, args.max_frames)

        add("local OnnxRunner, batch 1 (one camera)", 1, baseline())
        add(f"local OnnxRunner, batch {args.max_batch} (offline ceiling)", 1,
            local_runner(onnx, video, args.seconds, args.threads, args.max_batch, args.max_frames))

        for instances in (1, 2):
            repo = root / f"repo{instances}"
            package_repository(repo, "python", onnx=onnx, max_batch=args.max_batch, instances=instances,
                               threads=args.threads, device="cpu")
            with TritonServerProcess(repo) as srv:
                bench_streams([video], srv.endpoints.grpc_url, 2, 3.0, None, lambda *_: None,
                              max_frames=args.max_frames)    # warm-up
                for streams in ((1, args.streams) if instances == 1 else (args.streams,)):
                    base = baseline()
                    add(f"tritonserver + python-backend repo, {instances} instance(s)", streams,
                        server_run(srv.endpoints, None, video, streams, args.seconds, args.max_frames), base)
        with PyTritonServer(served_model(onnx=onnx, threads=args.threads), max_batch=args.max_batch) as srv:
            bench_streams([video], srv.endpoints.grpc_url, 2, 3.0, None, lambda *_: None, max_frames=args.max_frames)
            base = baseline()
            add("PyTriton hosting OnnxRunner, 1 instance", args.streams,
                server_run(srv.endpoints, srv.access_token, video, args.streams, args.seconds, args.max_frames), base)
    total = time.perf_counter() - t_start
    result = {"machine": info, "load_average_end": round(os.getloadavg()[0], 1), "video": str(video),
              "date": time.strftime("%Y-%m-%d"), "rows": rows, "total_s": total,
              "args": {"seconds": args.seconds, "threads": args.threads, "max_batch": args.max_batch,
                       "max_frames": args.max_frames, "streams": args.streams}}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.write:
        write_section(args.write, SECTION, markdown(result, args, video, result["date"]))


def markdown(result: dict, args, video: Path, date: str | None = None) -> str:
    base = result["rows"][0]["clips_per_s"]
    lines = [SECTION, "",
             f"Measured by `python benchmarks/bench_serving.py --write docs/benchmarks.md` on {date or time.strftime('%Y-%m-%d')}.",
             "", f"Machine: {result['machine']}; load average {result.get('load_average_end', float('nan')):.1f} at the end "
             "(the machine is shared: other jobs ran during the measurement)", "",
             f"Settings: model `tiny` (random weights, loop scan, ONNX Runtime CPU, {args.threads} intra-op thread per "
             f"runner or server instance); input `{video.name}` (first {args.max_frames} frames, prepared once, looped), "
             f"one clip ({result['rows'][0].get('clip_len', 5)} frames) per request; streams are closed-loop gRPC clients on 127.0.0.1 (each sends its next "
             f"clip when the last is answered); {args.seconds:g} s timed per row after a 3 s warm-up; dynamic batching "
             f"max batch {args.max_batch}, queue delay 500 µs; latency = client send to answer. Batch sizes are the "
             f"server's own counts (statistics API, `size:executions`); the client runs in the same 2 cores. "
             f"Total {result['total_s']:.0f} s.", "",
             "| configuration | streams | clips/s | local batch 1 just before (clips/s) | ratio | p50 ms | p99 ms | failed | mean batch | batch sizes (size:executions) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        b = r.get("batching")
        ref = r.get("baseline_clips_per_s", base)
        cells = [r["config"], str(r["streams"]), f"{r['clips_per_s']:.1f}",
                 f"{r['baseline_clips_per_s']:.1f}" if "baseline_clips_per_s" in r else "-",
                 f"{r['clips_per_s'] / ref:.2f}x", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                 str(r.get("failed", "-")), f"{b['mean_batch']:.2f}" if b else "-",
                 fmt_sizes(b["batch_sizes"]) if b else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", reading(result), ""]
    return "\n".join(lines)


def reading(result: dict) -> str:
    """What the rows say, with their own numbers (so a rerun keeps text and table consistent)."""
    rows = result["rows"]
    local1, local8 = rows[0], rows[1]
    many = [r for r in rows if r["streams"] > 1 and "batching" in r]
    main = next((r for r in many if "1 instance" in r["config"] and "tritonserver" in r["config"]), many[0])
    littles = main["streams"] / main["clips_per_s"] * 1000
    comparisons = ""  # sentences on the other server rows, worded by what they measured
    two = next((r for r in many if "2 instance" in r["config"]), None)
    if two is not None:
        ratio = two["clips_per_s"] / main["clips_per_s"]
        comparisons += (f" A second instance gave {ratio:.2f}x the clips/s of one: each instance runs ONNX Runtime "
                        "on one intra-op thread, so two instances can keep both cores busy." if ratio >= 1.1 else
                        f" A second instance on two cores only splits the batches ({ratio:.2f}x the clips/s of one).")
    pytriton = next((r for r in many if r["config"].startswith("PyTriton")), None)
    if pytriton is not None:
        verb = "trails" if pytriton["clips_per_s"] < main["clips_per_s"] else "keeps up with"
        comparisons += (" PyTriton runs the runner inside the Python process that also runs the client threads, so "
                        f"it {verb} the binary ({pytriton['clips_per_s']:.1f} vs {main['clips_per_s']:.1f} clips/s).")
    return (
        f"Reading the numbers: dynamic batching works — with {main['streams']} streams the tritonserver ran "
        f"batches of {main['batching']['mean_batch']:.1f} clips on average (largest "
        f"{main['batching']['max_batch_seen']}) with no failed request. The throughput gain of one instance over one "
        f"local runner is {main['clips_per_s'] / main['baseline_clips_per_s']:.2f}x: on this CPU a batch costs "
        f"almost as much per clip as single clips (local batch {result['args']['max_batch']} gave "
        f"{local8['clips_per_s'] / local1['clips_per_s']:.2f}x batch 1 in the same run), and the client's "
        f"{main['streams']} threads, gRPC and the Python backend's inter-process copies share the same two cores. "
        f"Latency under load is queueing: {main['streams']} closed-loop streams at {main['clips_per_s']:.1f} clips/s "
        f"wait {littles:.0f} ms per request by Little's law, against a measured p50 of {main['p50_ms']:.0f} ms."
        f"{comparisons} What a server is for — GPUs, several of them, several machines — cannot be measured on this "
        "machine.")





if __name__ == "__main__":
    main()
