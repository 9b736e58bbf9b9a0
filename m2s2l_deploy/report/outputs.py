"""A bench run's per-frame outputs: the scores CSV and the annotated video, written atomically.

Both are written to a temporary name and renamed (the video through ``AnnotatedWriter.commit``),
so a failed run leaves no partial file; a write error is one UserError line.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_write_bytes

ANNOTATE_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}


def write_guarded(path: Path, what: str, write) -> None:
    """``atomic_write_bytes`` with an OSError turned into one line naming the output."""
    try:
        atomic_write_bytes(path, write)
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {e.strerror or e}") from None


def write_scores_csv(path: Path, result) -> None:
    """frame, source_frame, time_s, score, decidable (0 = no full history yet), in_alert.

    ``result``: a ``jobs.bench.BenchResult`` (scores, decidable, source_index, alerts, fps)."""
    in_alert = np.zeros(len(result.scores), bool)
    for ev in result.alerts:
        in_alert[ev.start_frame:ev.end_frame + 1] = True
    fps = result.fps or 0.0

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["frame", "source_frame", "time_s", "score", "decidable", "in_alert"])
            for k, (src, s, d, a) in enumerate(zip(result.source_index, result.scores, result.decidable, in_alert)):
                w.writerow([k, int(src), f"{k / fps:.3f}" if fps else "", f"{float(s):.6g}", int(d), int(a)])
    write_guarded(path, "scores CSV", write)


class AnnotatedWriter:
    """Writes the scored frames with the score, threshold and live alert state drawn on them.

    Writes to a hidden temporary file beside the target and renames it on ``commit``; ``abort``
    removes it, so a failed run leaves no partial video.
    """

    def __init__(self, path: Path, fps: float, size_wh: tuple[int, int]):
        import cv2
        self.cv2 = cv2
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}{self.path.suffix}")
        codec = ANNOTATE_CODECS[self.path.suffix.lower()]
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*codec), float(fps or 10.0), size_wh)
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise UserError(f"OpenCV cannot write {codec} video to {self.path}")
        self.w, self.h = size_wh

    def write(self, frame: np.ndarray, k: int, score: float, threshold: float | None, decidable: bool,
              alert: bool) -> None:
        cv2 = self.cv2
        img = frame.copy()
        scale = max(0.35, self.w / 640.0)
        bar_h = int(22 * scale) + 4
        cv2.rectangle(img, (0, 0), (self.w, bar_h), (0, 0, 0), -1)
        text = f"#{k} score {score:+.2f}"
        if threshold is not None:
            text += f" / thr {threshold:.2f}"
        if not decidable:
            text += " (no full history)"
        colour = (0, 0, 255) if alert else (255, 255, 255)
        cv2.putText(img, text, (4, bar_h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, colour, 1, cv2.LINE_AA)
        if alert:
            t = max(2, int(4 * scale))
            cv2.rectangle(img, (0, 0), (self.w - 1, self.h - 1), (0, 0, 255), t)
            cv2.putText(img, "ALERT", (4, bar_h + int(24 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale,
                        (0, 0, 255), 2, cv2.LINE_AA)
        self.writer.write(img)

    def commit(self) -> None:
        self.writer.release()
        try:
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write annotated video {self.path}: {e.strerror or e}") from None

    def abort(self) -> None:
        self.writer.release()
        self.tmp.unlink(missing_ok=True)
