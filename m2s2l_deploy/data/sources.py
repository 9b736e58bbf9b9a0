"""What a SOURCE argument names, and how to open it: a video file, a folder of frames, an
``http(s)://`` or ``rtsp://`` stream, or a local camera (``camera:N``).

Why one module: ``bench`` and ``watch`` take the same SOURCE arguments, and every opened source
answers the same questions (nominal rate, frame count when known) and yields the same thing,
``(index, timestamp in seconds, BGR frame)``, so the readers above (``stream.VideoReader`` for
bench, ``live.LiveReader`` for watch) never ask what kind of source they hold.

Timestamps: a file or folder plays at its rate (``index / fps``); a stream gives the time the frame
was captured when it says so (an MJPEG part's ``X-Timestamp``), else the time it arrived.

Credentials: a URL's ``user:password@`` and secret-looking query values (``token=`` ...) serve the
connection only. Everything printed, logged or written uses ``Source.name``, where ``urls.redact``
masked them, and every error message is built from that name.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from ..errors import DataError, UserError
from ..urls import redact
from .opened import OpenedSource, SourceError, StreamLost

KINDS = ("file", "folder", "http", "rtsp", "camera")
_SCHEMES = {"http": "http", "https": "http", "rtsp": "rtsp", "rtsps": "rtsp"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CAMERA = re.compile(r"camera:(\d+)", re.IGNORECASE)
HELP = "a video file, a folder of frames, an http(s):// or rtsp:// URL, or camera:N"


@dataclass(frozen=True)
class Source:
    """A parsed SOURCE: ``kind`` (one of KINDS), ``name`` (safe to print), ``fps`` given by the user.

    ``target`` (the path, the URL with its credentials, or the camera number) is for opening only;
    it is left out of ``repr``.
    """

    kind: str
    name: str
    target: str = field(repr=False)
    fps: float | None = None

    @property
    def live(self) -> bool:
        """A stream or camera: it never ends by itself, and frames it sends while we are busy are lost."""
        return self.kind in ("http", "rtsp", "camera")

    def open(self, timeout_s: float = 10.0) -> "OpenedSource":
        """Open it now; ``timeout_s`` bounds the connection and every wait for a frame (streams)."""
        if self.kind == "file":
            return _FileSource(self)
        if self.kind == "folder":
            return _FolderSource(self)
        if self.kind == "http":
            from .mjpeg import open_mjpeg
            opened = open_mjpeg(self.target, self.name, timeout_s)
            if opened is not None:
                return opened
        if self.kind == "camera":
            return _CaptureSource(self, _open_camera(int(self.target), self.name), timeout_s)
        return _CaptureSource(self, _open_url(self.target, self.name, timeout_s), timeout_s)


def parse_source(text, fps: float | None = None) -> Source:
    """SOURCE text -> Source, checking what can be checked without connecting (a UserError otherwise)."""
    raw = os.fspath(text).strip() if isinstance(text, (str, os.PathLike)) else ""
    if not raw:
        raise UserError(f"empty source: give {HELP}")
    if fps is not None and not (math.isfinite(fps) and 0 < fps <= 1000):
        raise UserError(f"--fps must be a frame rate between 0 and 1000, got {fps}")
    cam = _CAMERA.fullmatch(raw)
    if cam:
        return Source("camera", f"camera:{int(cam.group(1))}", cam.group(1), fps)
    if raw.lower().startswith("camera:"):
        raise UserError(f"a camera source is camera:N with N the device number (camera:0), got '{raw}'")
    scheme = _SCHEME.match(raw)
    if scheme:
        name = redact(raw)
        kind = _SCHEMES.get(scheme.group(1).lower())
        if kind is None:
            raise UserError(f"unknown scheme '{scheme.group(1)}://' in source {name} (a source is {HELP})")
        if not urlsplit(raw).hostname:
            raise UserError(f"source {name} names no host")
        return Source(kind, name, raw, fps)
    path = Path(raw)
    if path.is_dir():
        from .readers import image_frames
        if not image_frames(path):
            raise DataError(f"folder {path} contains no image frames to play "
                            "(.jpg, .jpeg, .png, .tif, .tiff, .bmp)")
        return Source("folder", str(path), str(path), fps)
    if not path.exists():
        raise DataError(f"source not found: {path} (a source is {HELP})")
    return Source("file", str(path), str(path), fps)


class _FileSource(OpenedSource):
    def __init__(self, source: Source):
        from .video import video_info
        self.source = source
        info = video_info(source.target)          # exists, not empty, first frame decodable
        self.fps = info["fps"] or source.fps or None     # --fps only stands in for a missing rate
        self.size = (info["width"], info["height"])
        self.n_frames = info["n_frames"]
        self._it = None

    def frames(self):
        from .video import iter_video
        self._it = iter_video(self.source.target)
        step = 1.0 / self.fps if self.fps else 0.0
        while True:
            t0 = time.perf_counter()
            try:
                k, frame = next(self._it)
            except StopIteration:
                return
            finally:
                self.decode_s += time.perf_counter() - t0
            yield k, k * step, frame

    def close(self) -> None:
        if self._it is not None:
            self._it.close()       # releases the capture


class _FolderSource(OpenedSource):
    def __init__(self, source: Source):
        from .readers import image_frames
        from .video import read_image
        self.source = source
        self.paths = image_frames(Path(source.target))
        if not self.paths:
            raise DataError(f"folder {source.target} contains no image frames to play")
        first = read_image(self.paths[0])
        self.size = (first.shape[1], first.shape[0])
        self.fps = source.fps
        self.n_frames = len(self.paths)

    def frames(self):
        from .video import read_image
        step = 1.0 / self.fps if self.fps else 0.0
        for i, path in enumerate(self.paths):
            t0 = time.perf_counter()
            frame = read_image(path)
            self.decode_s += time.perf_counter() - t0
            if frame.ndim == 2:
                frame = np.repeat(frame[:, :, None], 3, axis=2)   # as a gray video decodes: BGR
            if (frame.shape[1], frame.shape[0]) != self.size:
                raise DataError(f"frame {path} is {frame.shape[1]}x{frame.shape[0]}, but the folder's first "
                                f"frame is {self.size[0]}x{self.size[1]}")
            yield i, i * step, frame


def _open_url(url: str, name: str, timeout_s: float):
    """An FFmpeg capture of a network stream with open and read timeouts (so a stall ends a read)."""
    import cv2
    ms = int(max(1.0, timeout_s) * 1000)
    try:
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                     cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    except cv2.error:
        cap = None
    if cap is None or not cap.isOpened():
        raise SourceError(f"cannot open {name} (unreachable, refused, or not a video stream)")
    return cap


def _open_camera(index: int, name: str):
    import cv2
    if sys.platform.startswith("linux"):
        dev = Path(f"/dev/video{index}")
        if not dev.exists():
            raise SourceError(f"{name}: no such camera ({dev} does not exist)")
        cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
    else:
        cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        raise SourceError(f"{name} cannot be opened (in use by another program, or not a capture device)")
    return cap


class _CaptureSource(OpenedSource):
    """An OpenCV capture of a live stream or camera: frames stamped with their arrival time."""

    def __init__(self, source: Source, cap, timeout_s: float):
        import cv2
        self.source, self.cap, self.timeout_s = source, cap, timeout_s
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = source.fps or (fps if math.isfinite(fps) and 0 < fps < 1000 else None)

    def frames(self):
        import cv2
        i = 0
        while True:
            t0 = time.perf_counter()
            try:
                ok, frame = self.cap.read()
            except cv2.error:
                ok, frame = False, None
            self.decode_s += time.perf_counter() - t0
            if not ok or frame is None or frame.size == 0:
                raise StreamLost(f"no frame (the stream ended, or nothing for {self.timeout_s:g} s)")
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            yield i, time.monotonic(), frame
            i += 1

    def close(self) -> None:
        self.cap.release()
