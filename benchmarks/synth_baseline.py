"""Check the synthetic set's difficulty: frame-difference baseline AUC per seed.

Why: the synthetic scene is only a useful test bed if motion energy alone does not solve it
(target: micro AUC <= 0.80 under per-video min-max on seeds 0-3). Run:

    python benchmarks/synth_baseline.py [--seeds 0 1 2 3] [--samples /tmp/synth_samples.png]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from m2s2l_deploy.data.synth import generate_scene
from m2s2l_deploy.report.metrics import frame_auc, frame_difference_scores, minmax_per_video


def load_frames(folder: Path) -> np.ndarray:
    files = sorted(folder.glob("*.png"))
    return np.stack([cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files])


def evaluate(root: Path) -> dict:
    """Baseline AUCs on one generated set; per-video AUCs are keyed by video and event type."""
    meta = json.loads((root / "scene.json").read_text())
    scores, labels = {}, {}
    for vdir in sorted((root / "testing" / "frames").iterdir()):
        scores[vdir.name] = minmax_per_video(frame_difference_scores(load_frames(vdir)))
        labels[vdir.name] = np.load(root / "testing" / "test_frame_mask" / f"{vdir.name}.npy")
    res = frame_auc(scores, labels)
    res["types"] = {v: meta["videos"][f"testing/{v}"]["anomaly"] for v in labels}
    return res


def contact_sheet(root: Path, path: Path) -> None:
    """Tile one training frame and the middle anomalous frame of every test video, labelled."""
    meta = json.loads((root / "scene.json").read_text())
    tiles = []
    train = sorted((root / "training" / "frames").iterdir())
    for vdir in train[:2]:
        f = load_frames(vdir)
        tiles.append((f[len(f) // 2], "train " + vdir.name))
    for vdir in sorted((root / "testing" / "frames").iterdir()):
        info = meta["videos"][f"testing/{vdir.name}"]
        f = load_frames(vdir)
        masks = np.load(root / "testing" / "test_pixel_mask" / f"{vdir.name}.npz")["masks"]
        area = masks.reshape(len(masks), -1).sum(axis=1)
        t = int(np.argmax(area)) if area.any() else len(f) // 2  # where the object shows most
        img = cv2.cvtColor(f[t], cv2.COLOR_GRAY2BGR)
        if area.any():  # outline the labelled object so it can be found at a glance
            x, y, w, h = cv2.boundingRect(masks[t])
            cv2.rectangle(img, (x - 2, y - 2), (x + w + 1, y + h + 1), (0, 0, 255), 1)
        tiles.append((img, f"{info['anomaly']} t={t}"))
    scale = 3
    cells = []
    for img, text in tiles:
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1)
        cells.append(img)
    cols = 4
    while len(cells) % cols:
        cells.append(np.zeros_like(cells[0]))
    rows = [np.hstack(cells[i:i + cols]) for i in range(0, len(cells), cols)]
    cv2.imwrite(str(path), np.vstack(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--scene", type=int, default=0)
    ap.add_argument("--samples", type=Path, default=None, help="contact sheet PNG (first seed)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="synth_baseline_"))
    try:
        for i, seed in enumerate(args.seeds):
            root = work / f"seed{seed}"
            t0 = time.perf_counter()
            generate_scene(root, seed=seed, scene=args.scene)
            gen_s = time.perf_counter() - t0
            res = evaluate(root)
            per = ", ".join(f"{res['types'][v]}={r['auc']:.2f}" for v, r in res["per_video"].items()
                            if r["auc"] is not None)
            print(f"seed {seed}: micro {res['auc_micro']:.3f}  macro {res['auc_macro']:.3f}  "
                  f"(generated in {gen_s:.1f}s)  [{per}]")
            if i == 0 and args.samples is not None:
                contact_sheet(root, args.samples)
                print(f"contact sheet: {args.samples}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
