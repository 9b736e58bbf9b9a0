"""A camera on loopback for tests and benchmarks: MJPEG over HTTP, paced by the wall clock.

``LiveServer(parts, fps)`` serves pre-encoded images (JPEG or PNG bytes) as
``multipart/x-mixed-replace`` on 127.0.0.1 at a free port. The clock decides which frame is on air
(frame n at t0 + n/fps, the list looping), so a client that connects or reconnects gets the current
frame, not the first one, as from a real camera. Every part carries ``X-Timestamp``, the frame's
media time: ``loop * period + timestamps[i]`` (default timestamps i/fps and period their length; a
benchmark may leave jumps between clips so that a client restarts its history there), so a test
knows which frame a client received.

Faults a camera has:
- ``cut(down_s)``: every open connection is closed now, and for ``down_s`` new ones are closed
  without an answer;
- ``stall(seconds)``: every connection (also new ones) stays open but gets nothing for that long.
``auth=(user, password)`` answers other requests with 401.
"""

from __future__ import annotations

import base64
import http.server
import socket
import threading
import time


class LiveServer:
    def __init__(self, parts: list[bytes], fps: float, timestamps: list[float] | None = None,
                 period: float | None = None, auth: tuple[str, str] | None = None):
        self.parts, self.fps = parts, float(fps)
        self.timestamps = timestamps or [i / self.fps for i in range(len(parts))]
        self.period = period or self.timestamps[-1] + 1.0 / self.fps
        self.auth = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode() if auth else None
        self.down_until = self.stall_until = 0.0
        self.connections = 0
        self.sent = 0
        self.first_frames: list[int] = []     # per connection that got frames: the first one sent
        self._cut = 0
        self._socks: set = set()
        self._lock = threading.Lock()
        self._stopping = False
        self.t0 = time.monotonic()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.serve(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/stream"

    def media_time(self, n: int) -> float:
        """X-Timestamp of the n-th frame on air since the start."""
        loop, i = divmod(n, len(self.parts))
        return loop * self.period + self.timestamps[i]

    def frame_of(self, ts: float) -> int:
        """The index in ``parts`` of the frame sent with X-Timestamp ``ts``."""
        t = ts % self.period
        return min(range(len(self.timestamps)), key=lambda i: abs(self.timestamps[i] - t))

    def start(self) -> "LiveServer":
        self.t0 = time.monotonic()
        self.thread.start()
        return self

    def cut(self, down_s: float) -> None:
        with self._lock:
            self.down_until = time.monotonic() + down_s
            self._cut += 1
            for s in list(self._socks):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stall(self, seconds: float) -> None:
        self.stall_until = time.monotonic() + seconds

    def stop(self) -> None:
        self._stopping = True
        self.cut(0.0)
        self.httpd.shutdown()
        self.httpd.server_close()

    def serve(self, h) -> None:
        if time.monotonic() < self.down_until:
            return                                   # closed without an answer
        if self.auth and h.headers.get("Authorization") != self.auth:
            h.send_error(401)
            return
        with self._lock:
            self._socks.add(h.connection)
            self.connections += 1
            cut = self._cut
        try:
            h.send_response(200)
            h.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            h.send_header("Cache-Control", "no-cache")
            h.end_headers()
            last = -1
            while not self._stopping and cut == self._cut:
                now = time.monotonic()
                if now < self.stall_until:
                    time.sleep(0.02)
                    continue
                n = int((now - self.t0) * self.fps)
                if n <= last:
                    time.sleep(max(0.0, self.t0 + (last + 1) / self.fps - now))
                    continue
                data = self.parts[n % len(self.parts)]
                kind = "image/png" if data[:4] == b"\x89PNG" else "image/jpeg"
                head = (f"--frame\r\nContent-Type: {kind}\r\nContent-Length: {len(data)}\r\n"
                        f"X-Timestamp: {self.media_time(n):.6f}\r\n\r\n").encode()
                h.wfile.write(head + data + b"\r\n")
                h.wfile.flush()
                if last < 0:
                    self.first_frames.append(n)
                self.sent += 1
                last = n
        except OSError:
            pass                                      # the client went away, or we cut it
        finally:
            with self._lock:
                self._socks.discard(h.connection)


def closed_port() -> int:
    """A loopback port nothing listens on (an unreachable camera)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
