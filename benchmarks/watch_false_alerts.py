"""False alerts per hour on normal footage: train on UCSD Ped2's training videos 01-12, then `watch`
videos 13-16 (normal footage the model never saw) served as one looped live stream.

The stream is the tests' loopback camera (tests/live_server.py): MJPEG over HTTP on 127.0.0.1,
paced by the wall clock, the original JPEG frames of videos 13, 14, 15 and 16 one after the other,
looped. Each boundary between two videos leaves a jump of --jump seconds in the frames'
X-Timestamp, so `watch` restarts its clip history there instead of scoring the cut between two
scenes as motion. `watch` runs as a user runs it: the CLI, the model's stored (calibrated)
threshold, the default alert rule (raise after 3 consecutive frames above the threshold, merge
gaps of up to 5 frames), for --minutes. Every alert on this footage is a false alert:

    alerts per hour = alerts / (frames scored / fps / 3600)

With `--checkpoint train` the model is trained first with the README's train command on a folder
of symlinks to training videos 01-12 (the last of them, 12, is held out by `train` to calibrate
the score and the threshold); otherwise --checkpoint is an existing run folder (it should not have
seen videos 13-16). Results go to OUT/watch_false_alerts.json (and the events to OUT/events.jsonl).

    python benchmarks/watch_false_alerts.py --data PED2_ROOT --checkpoint train --train-minutes 10 --minutes 10 --out runs/fa
    python benchmarks/watch_false_alerts.py --data PED2_ROOT --checkpoint RUN_DIR --minutes 10 --out runs/fa
    python benchmarks/watch_false_alerts.py --data PED2_ROOT --checkpoint train --train-steps 100 --minutes 1 --out /tmp/fa  # smoke

PED2_ROOT is the MNAD frames layout (training/frames/01..16/*.jpg); it is only read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from live_server import LiveServer  # noqa: E402
from _common import cli  # noqa: E402

from m2s2l_deploy.data.readers import image_frames  # noqa: E402
from m2s2l_deploy.files import atomic_write_json  # noqa: E402

TRAIN, WATCH = [f"{i:02d}" for i in range(1, 13)], [f"{i:02d}" for i in range(13, 17)]


def training_subset(data: Path, out: Path) -> Path:
    """OUT/ped2-train/training/frames/01..12 as symlinks to the dataset's folders (the dataset is only read)."""
    root = out / "ped2-train"
    frames = root / "training" / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    for v in TRAIN:
        link, target = frames / v, (data / "training" / "frames" / v).resolve()
        if not target.is_dir():
            sys.exit(f"{target} not found: --data must be Ped2 in the MNAD frames layout")
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    return root


def stream_parts(data: Path, fps: float, jump: float) -> tuple[list[bytes], list[float], float, dict]:
    """The JPEG bytes of videos 13-16 in order, their X-Timestamps (a jump between videos), the loop period."""
    parts, stamps, t, lengths = [], [], 0.0, {}
    for v in WATCH:
        paths = image_frames(data / "training" / "frames" / v)
        if not paths:
            sys.exit(f"no frames in {data / 'training' / 'frames' / v}")
        lengths[v] = len(paths)
        for p in paths:
            parts.append(p.read_bytes())
            stamps.append(t)
            t += 1.0 / fps
        t += jump
    return parts, stamps, t, lengths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="UCSD Ped2 root, MNAD frames layout")
    ap.add_argument("--checkpoint", required=True, help="a run folder, or 'train' to train one on videos 01-12")
    ap.add_argument("--onnx", type=Path, help="watch with this ONNX export of the checkpoint (ONNX Runtime)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to watch (the benchmark: >= 10)")
    ap.add_argument("--train-minutes", type=float, default=10.0)
    ap.add_argument("--train-steps", type=int, help="train for this many steps instead of --train-minutes")
    ap.add_argument("--fps", type=float, default=10.0, help="Ped2's frame rate")
    ap.add_argument("--jump", type=float, default=5.0, help="seconds of timestamp jump between two videos")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"

    if args.checkpoint == "train":
        run = out / "model"
        budget = ["--steps", args.train_steps] if args.train_steps else ["--minutes", args.train_minutes]
        print(f"training on Ped2 training videos 01-12 ({' '.join(map(str, budget))}) -> {run}")
        cli("train", "--data", training_subset(args.data, out), *budget, "--out", run, "--threads", args.threads,
            log=log)
    else:
        run = Path(args.checkpoint)

    parts, stamps, period, lengths = stream_parts(args.data, args.fps, args.jump)
    server = LiveServer(parts, args.fps, stamps, period=period).start()
    model = ["--onnx", args.onnx] if args.onnx else ["--checkpoint", run]
    print(f"watching videos 13-16 ({len(parts)} frames, {len(parts) / args.fps:.0f} s a loop) live for "
          f"{args.minutes:g} min at {server.url}")
    t0 = time.time()
    try:
        cli("watch", server.url, *model, "--threads", args.threads, "--duration", args.minutes * 60,
            "--events", out / "events.jsonl", "--json", out / "watch.json", log=log)
    finally:
        server.stop()
    summary = json.loads((out / "watch.json").read_text())
    src = summary["sources"][0]
    hours = src["scored"] / args.fps / 3600.0
    alerts = len(src["alerts"])
    result = {
        "what": "false alerts per hour: Ped2 training videos 13-16 (normal, unseen) watched as a looped live stream",
        "checkpoint": str(run), "runner": summary["runner"], "threshold": src["threshold"],
        "threshold_source": src["threshold_source"], "alert_rule": {k: summary["settings"][k] for k in ("min_frames", "merge_gap")},
        "videos": lengths, "loops": round(args.minutes * 60 / (len(parts) / args.fps), 2),
        "minutes_watched": round((time.time() - t0) / 60, 2), "frames_in": src["frames_in"], "frames_scored": src["scored"],
        "frames_dropped": src["dropped"], "hours_scored": round(hours, 4), "alerts": alerts,
        "alerts_per_hour": round(alerts / hours, 2) if hours > 0 else None, "gaps": len(src["gaps"]),
        "latency_ms": src["latency_ms"], "alert_list": src["alerts"],
    }
    atomic_write_json(out / "watch_false_alerts.json", result)
    print(f"| {result['minutes_watched']:.1f} min | {result['frames_scored']} frames scored ({result['frames_dropped']} "
          f"dropped) | threshold {result['threshold']} ({result['threshold_source']}) | {alerts} alerts | "
          f"{result['alerts_per_hour']} false alerts per hour |")
    print(f"wrote {out / 'watch_false_alerts.json'}")


if __name__ == "__main__":
    main()
