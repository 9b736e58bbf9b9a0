"""Video and image decoding with OpenCV, turning every decoding failure into a one-line DataError."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from ..errors import DataError

VIDEO_EXTS = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".webm", ".wmv")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

_DIGITS = re.compile(r"(\d+)")


def natural_key(name) -> tuple:
    """Sort key so that '2.jpg' < '10.jpg', case-insensitively; ties fall back to the raw name."""
    s = os.fspath(name)
    parts = tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(_DIGITS.split(s)))
    return parts, s


def is_video_file(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTS


def is_image_file(path) -> bool:
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    if not path.is_file():
        raise DataError(f"{what} is not a file: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{what} is empty (0 bytes): {path}")


def _open_capture(path) -> cv2.VideoCapture:
    path = Path(path)
    _check_file(path, "video file")
    try:
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap = cv2.VideoCapture(str(path))
    except cv2.error as exc:
        raise DataError(f"cannot open {path} as a video: {exc}") from None
    if not cap.isOpened():
        raise DataError(f"cannot open {path} as a video (not a video file, or an unsupported codec)")
    return cap


def _read(cap: cv2.VideoCapture) -> np.ndarray | None:
    try:
        ok, frame = cap.read()
    except cv2.error:
        return None
    if not ok or frame is None or frame.size == 0:
        return None
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


def _fps(cap: cv2.VideoCapture) -> float:
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if math.isfinite(fps) and 0 < fps < 1000 else 0.0


def _frames(cap: cv2.VideoCapture, path: Path, max_frames: int | None) -> Iterator[tuple[int, np.ndarray]]:
    try:
        i = 0
        while max_frames is None or i < max_frames:
            frame = _read(cap)
            if frame is None:
                break
            yield i, frame
            i += 1
        if i == 0 and max_frames != 0:
            raise DataError(f"no decodable frames in video {path}")
    finally:
        cap.release()


def iter_video(path, max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Stream (index, BGR uint8 frame) pairs; the file is opened (and checked) at call time.

    A truncated video ends at its last decodable frame; a video with no decodable frame raises.
    """
    cap = _open_capture(path)
    return _frames(cap, Path(path), max_frames)


def read_video(path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a whole video -> (frames (N,H,W,3) uint8 BGR, fps); fps is 0.0 when the file lacks it."""
    cap = _open_capture(path)
    fps = _fps(cap)
    frames = []
    for i, frame in _frames(cap, Path(path), max_frames):
        if frames and frame.shape != frames[0].shape:
            raise DataError(
                f"frame {i} of {path} is {frame.shape[1]}x{frame.shape[0]}, "
                f"but earlier frames are {frames[0].shape[1]}x{frames[0].shape[0]}"
            )
        frames.append(frame)
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8), fps
    return np.stack(frames), fps


def video_info(path) -> dict:
    """fps, n_frames (from the container, so an estimate; counted when missing), width, height.

    Reads the first frame so that a file OpenCV opens but cannot decode is rejected here.
    """
    cap = _open_capture(path)
    try:
        fps = _fps(cap)
        n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        first = _read(cap)
        if first is None:
            raise DataError(f"no decodable frames in video {path}")
        height, width = first.shape[:2]
        if math.isfinite(n) and n > 0:
            n_frames = int(round(n))
        else:
            n_frames = 1
            while _grab(cap):
                n_frames += 1
    finally:
        cap.release()
    return {"fps": fps, "n_frames": n_frames, "width": int(width), "height": int(height)}


def _grab(cap: cv2.VideoCapture) -> bool:
    try:
        return bool(cap.grab())
    except cv2.error:
        return False


def count_frames(path) -> int:
    """Exact number of decodable frames (decodes the whole file)."""
    cap = _open_capture(path)
    try:
        n = 0
        while _grab(cap):
            n += 1
    finally:
        cap.release()
    if n == 0:
        raise DataError(f"no decodable frames in video {path}")
    return n


def read_image(path) -> np.ndarray:
    """Read an image as uint8: gray stays (H,W), colour is (H,W,3) BGR, alpha is dropped.

    16-bit and float images are scaled to 8 bits so every frame source gives the same range.
    """
    path = Path(path)
    _check_file(path, "image file")
    try:
        buf = np.fromfile(path, dtype=np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except (OSError, cv2.error) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    if img is None or img.size == 0:
        raise DataError(f"cannot decode image {path} (corrupt or not an image)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 2:
        img = img[:, :, 0]
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.nan_to_num(img.astype(np.float32))
        scale = 255.0 if img.size and float(img.max()) <= 1.0 else 1.0
        img = np.clip(np.rint(img * scale), 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DataError(f"unsupported pixel type {img.dtype} in image {path}")
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise DataError(f"unsupported image layout {img.shape} in {path}")
    return img
