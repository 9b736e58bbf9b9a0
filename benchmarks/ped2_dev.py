"""Development sets from UCSD Ped2's *training* videos: where real-footage choices are judged.

Ped2's test set is the benchmark everyone reports on, so every look at it is a choice. These sets
use only its training videos (all normal): most stay training footage, and labelled test videos
are cut from the others with the injected-anomaly benchmark's events (a 3x speed-up, a crate that
appears and stays, a fast rider-sized shape, a striped cart at walking speed; see
benchmarks/injected_anomalies.py). Three splits:

- A: train on videos 01-12; seven test videos from 13-16, recorded like the held-out video;
- B: train on 04-15; six test videos from 01-03 and 16, whose backgrounds differ most from the
  training footage's median (other recording conditions).
- C: train on 01-12; eight test videos from 13-16 (two each) in which a walker cut out of the
  footage glides across at its own height, 4 px/frame (subtle: 2.5; Ped2's walkers move about 1):
  it looks like everyone else and only moves too fast, like Ped2's cyclists and skaters,
  where the events of A and B also look unlike anything in the footage.

Then, per training seed, the README's train command (only --data set; --minutes, or --steps on a
shared machine) and `evaluate` with defaults. Prints micro AUC (paper protocol / causal) and the
ablation, and writes OUT/results.json (the set itself: OUT/data). It writes no docs: its numbers feed choices, which
docs/results.md records by hand.

    python benchmarks/ped2_dev.py --data PED2 --split A --out runs/ped2-dev-a --steps 2700 --seeds 0
    python benchmarks/ped2_dev.py --data PED2 --split B --out runs/ped2-dev-b --steps 2000 --seeds 0

With the events above a model finds nearly every event in every video (per-video AUC 1.00 on
most), so the sets judge mostly how scores compare across videos. ``--events subtle`` cuts the
same videos with weaker events (a 2x speed-up, a rider at 8 px/frame instead of 25, a crate a
sixteenth of the frame's height and width instead of a tenth, a cart two thirds the size) that a
model does not always find (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from _common import build_once, training_budget, training_budget_args  # noqa: E402
from injected_anomalies import STRENGTHS, _write_frames, inject, source_frames, write_test_video  # noqa: E402
from ped2 import train_and_evaluate  # noqa: E402

from m2s2l_deploy.data import open_dataset  # noqa: E402
from m2s2l_deploy.errors import UserError  # noqa: E402
from m2s2l_deploy.files import atomic_write_json  # noqa: E402

# training videos kept as footage; test videos as (source training video, event), cut in order
SPLITS = {
    "A": {"train": range(1, 13), "test": [(13, "speedup"), (13, "static_object"), (14, "speedup"),
                                          (15, "fast_object"), (15, "large_object"), (16, "static_object"),
                                          (16, "large_object")]},
    "B": {"train": range(4, 16), "test": [(1, "speedup"), (2, "static_object"), (2, "fast_object"),
                                          (3, "speedup"), (16, "static_object"), (16, "large_object")]},
    # Ped2's own kind of anomaly: walkers of the footage gliding too fast (two per source video)
    "C": {"train": range(1, 13), "test": [(v, "glider") for v in (13, 13, 14, 14, 15, 15, 16, 16)]},
}
EVENT_SEED = 7          # where the objects go (one generator, drawn in the order of the test list)


def _bgr(frames: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) for f in frames]) if frames.ndim == 3 else frames


def build_split(videos: dict[int, np.ndarray], split: str, out: Path, events: str = "standard") -> dict:
    """Write the `frames` layout of ``split`` from Ped2's training videos (number -> uint8 frames),
    its events at the strength ``events`` (injected_anomalies.STRENGTHS)."""
    plan = SPLITS[split]
    needed = set(plan["train"]) | {v for v, _ in plan["test"]}
    if missing := sorted(needed - set(videos)):
        raise UserError(f"Ped2's training set lacks video(s) {', '.join(f'{v:02d}' for v in missing)}")
    summary = {"split": split, "events": events, "training": [f"{v:02d}" for v in plan["train"]], "testing": []}
    for v in plan["train"]:
        _write_frames(out / "training" / "frames" / f"{v:02d}", videos[v])
    rng = np.random.default_rng(EVENT_SEED)
    used = {v: 0 for v in videos}
    for i, (v, kind) in enumerate(plan["test"], 1):
        n = source_frames(kind, events)
        if used[v] + n > len(videos[v]):
            raise UserError(f"Ped2 training video {v:02d} has {len(videos[v])} frames, too few for its test videos")
        frames, labels = inject(kind, _bgr(videos[v][used[v]:used[v] + n]), rng, events)
        name = f"{i:02d}"
        write_test_video(out, name, frames, labels)
        summary["testing"].append({"video": name, "event": kind, "source": f"{v:02d}",
                                   "source_frames": [used[v], used[v] + n], "anomalous": int(labels.sum())})
        used[v] += n
    atomic_write_json(out / "ped2_dev.json", summary)
    return summary


def _refuse_other_set(data: Path, split: str, events: str) -> None:
    """An --out whose data was built for another split or event strength is reused by no run: one line, exit."""
    built = data / "ped2_dev.json"
    if built.exists():
        try:
            had = json.loads(built.read_text())
            had_split, had_events = had["split"], had.get("events", "standard")   # sets built before strengths existed
        except (ValueError, KeyError, TypeError):
            sys.exit(f"{built} is not a development set's summary; remove {data} or choose another --out")
        if (had_split, had_events) != (split, events):
            sys.exit(f"{data} holds split {had_split} with {had_events} events; choose another --out")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="UCSD Ped2 root (either layout of docs/data.md); only read")
    ap.add_argument("--split", choices=sorted(SPLITS), default="A")
    ap.add_argument("--events", choices=sorted(STRENGTHS), default="standard",
                    help="event strength: 'subtle' (2x speed-up, slower rider, smaller crate and cart) for "
                         "sets a model does not solve per video")
    ap.add_argument("--out", type=Path, default=Path("runs/ped2-dev"))
    training_budget_args(ap, minutes=15.0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    data = a.out / "data"

    def build(tmp: Path) -> None:
        train = open_dataset(a.data).train
        build_split({int(v.name[-2:]): v.load() for v in train if v.name[-2:].isdigit()}, a.split, tmp, a.events)
    _refuse_other_set(data, a.split, a.events)
    build_once(data, "ped2_dev.json", build)
    budget = training_budget(a)
    rows = [train_and_evaluate(data, a.out, s, budget, a.out / "commands.log") for s in a.seeds]
    for r in rows:
        ab = ", ".join(f"{k} {v:.3f}" for k, v in r["ablation"].items())
        print(f"seed {r['seed']} ({r['steps']} steps): micro {r['auc_micro']:.4f} / causal {r['auc_micro_causal']:.4f}; {ab}")
    atomic_write_json(a.out / "results.json", {"split": a.split, "events": a.events, "budget": budget, "seeds": rows})


if __name__ == "__main__":
    main()
