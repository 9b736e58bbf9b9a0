"""MJPEG over HTTP (``multipart/x-mixed-replace``), the stream most IP cameras serve, read part by part.

Why not hand these URLs to OpenCV's FFmpeg backend like RTSP: here every read has a socket timeout,
so a camera that keeps the connection open but stops sending ends the read after ``timeout_s``
(the stall watch relies on); each part's own headers carry the capture time when the camera sends
one (``X-Timestamp``, as mjpg-streamer and many cameras do); and each part is decoded with
``cv2.imdecode``, the same decoder a test uses on the same bytes. An HTTP URL that is not multipart
(a file, HLS) returns None and goes to FFmpeg.

Credentials in the URL become a Basic ``Authorization`` header (``urls.request``); the request itself
goes to the URL without them, so no error message can carry them.
"""

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request

import numpy as np

from ..urls import request
from .opened import OpenedSource, SourceError, StreamLost

MAX_LINE = 64 * 1024
MAX_PART = 64 * 1024 * 1024


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return type(reason).__name__ if not str(reason) else str(reason)


def open_mjpeg(url: str, name: str, timeout_s: float) -> "MjpegSource | None":
    """Connect; a multipart answer gives an MjpegSource, anything else None (closed again)."""
    try:
        resp = urllib.request.urlopen(request(url), timeout=timeout_s)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        raise SourceError(f"cannot open {name}: {_reason(e)}") from None
    ctype = resp.headers.get("Content-Type", "")
    if not ctype.lower().startswith("multipart/"):
        resp.close()
        return None
    boundary = resp.headers.get_param("boundary")
    if not boundary:
        resp.close()
        raise SourceError(f"{name} sends {ctype} without a boundary")
    return MjpegSource(resp, str(boundary).strip('"'), name, timeout_s)


class MjpegSource(OpenedSource):
    """Parts of a multipart HTTP response decoded as images; ``bad_parts`` counts undecodable ones."""

    def __init__(self, resp, boundary: str, name: str, timeout_s: float):
        self.resp, self.name, self.timeout_s = resp, name, timeout_s
        marker = boundary[2:] if boundary.startswith("--") else boundary
        self._marks = {b"--" + marker.encode("latin-1"), b"--" + marker.encode("latin-1") + b"--"}
        self._at_part = False           # the boundary line was already read (a part without Content-Length)
        self.bad_parts = 0

    def _io(self, fn, *args):
        """One read from the socket; a timeout is a stall, anything else a lost connection."""
        try:
            data = fn(*args)
        except (TimeoutError, socket.timeout):
            raise StreamLost(f"nothing for {self.timeout_s:g} s (stalled)") from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise StreamLost(f"connection lost ({_reason(e)})") from None
        if not data:
            raise StreamLost("the other side closed the connection")
        return data

    def _headers(self) -> dict[str, str]:
        if not self._at_part:
            while self._io(self.resp.readline, MAX_LINE).strip() not in self._marks:
                pass                    # preamble, or the CRLF after the previous part
        self._at_part = False
        headers = {}
        while True:
            line = self._io(self.resp.readline, MAX_LINE).strip()
            if not line:
                return headers
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()

    def _body(self, headers: dict[str, str]) -> bytes:
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) <= MAX_PART:
            chunks, left = [], int(length)
            while left:
                chunk = self._io(self.resp.read, min(left, 1 << 20))
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        lines = []                     # no length: the part ends at the next boundary line
        while True:
            line = self._io(self.resp.readline, MAX_PART)
            if line.strip() in self._marks:
                self._at_part = True
                body = b"".join(lines)
                return body[:-2] if body.endswith(b"\r\n") else body
            lines.append(line)

    def frames(self):
        import cv2
        use_header = None
        i = 0
        while True:
            headers = self._headers()
            t0 = time.perf_counter()
            body = self._body(headers)
            frame = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) if body else None
            self.decode_s += time.perf_counter() - t0
            if frame is None:
                self.bad_parts += 1
                continue
            stamp = _stamp(headers.get("x-timestamp"))
            if use_header is None:
                use_header = stamp is not None        # decided once per connection: one clock only
            if use_header and stamp is None:
                self.bad_parts += 1
                continue
            yield i, (stamp if use_header else time.monotonic()), frame
            i += 1

    def close(self) -> None:
        try:
            self.resp.close()
        except OSError:
            pass


def _stamp(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
