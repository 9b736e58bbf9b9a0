"""The picture an operator opens first: an alert's peak frame with its score map overlaid, as a JPEG.

The score map is at the model's input size; it is mapped back onto the camera frame (undoing a
letterbox when the input contract uses one), coloured (red = far from normal footage) and blended
over the frame, with the source, frame index, score and threshold written on a bar at the top.
Written atomically (a viewer never opens half a file).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..contract import InputContract, letterbox_geometry
from ..files import atomic_write_bytes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "source"


def overlay(image: np.ndarray, score_map: np.ndarray | None, contract: InputContract | None) -> np.ndarray:
    """``image`` (H, W, 3) BGR with ``score_map`` (h, w) at the model's size blended over it."""
    import cv2
    img = image.copy()
    if score_map is None:
        return img
    m = np.asarray(score_map, np.float32)
    if contract is not None and contract.resize == "letterbox":
        _, top, left, nh, nw = letterbox_geometry(img.shape[:2], m.shape[:2])
        m = m[top:top + nh, left:left + nw]
    m = cv2.resize(m, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = np.clip(m / max(float(m.max()), 1e-6), 0.0, 1.0)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (0.6 * heat)[:, :, None]
    return (img * (1 - alpha) + colour * alpha).astype(np.uint8)


def write_snapshot(folder: Path, event: dict, image: np.ndarray, score_map: np.ndarray | None,
                   contract: InputContract | None = None) -> Path:
    """Write ``event``'s peak frame to ``folder``; the file name says source, alert start and event kind."""
    import cv2
    img = overlay(image, score_map, contract)
    peak = event["peak"]
    text = f"{event['source']}  frame {peak['frame']}  score {peak['score']:.2f} / thr {event['threshold']:.2f}"
    scale = max(0.4, img.shape[1] / 900.0)
    bar = int(24 * scale) + 4
    cv2.rectangle(img, (0, 0), (img.shape[1], bar), (0, 0, 0), -1)
    cv2.putText(img, text, (4, bar - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (0, 0, 255), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise OSError("JPEG encoding failed")
    kind = event["event"].removeprefix("alert_")
    path = Path(folder) / f"{_slug(event['source'])}-{event['start_frame']:09d}-{kind}.jpg"
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(buf.tobytes()))
    return path
