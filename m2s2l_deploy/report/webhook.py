"""Alert events POSTed to a webhook from a background thread, so scoring never waits on the network.

A webhook that is slow, hangs or is down must not delay a single score: ``Webhook.post`` only puts
the event in a bounded queue (when it is full the oldest event is dropped and counted) and one
thread sends them in order, each request bounded by ``timeout_s`` and retried ``retries`` times
with doubling backoff before it counts as failed. ``close`` gives the queue at most ``grace_s``
to drain, then reports what was left. The URL's credentials go as a header (``urls.request``);
``name`` (masked) is what messages show.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Callable

from ..urls import redact, request


class Webhook:
    def __init__(self, url: str, *, timeout_s: float = 5.0, retries: int = 2, max_queue: int = 1000,
                 backoff_s: float = 0.5, log: Callable[[str], None] | None = None):
        self.url, self.name = url, redact(url)
        self.timeout_s, self.retries, self.max_queue, self.backoff_s = timeout_s, retries, max_queue, backoff_s
        self.log = log or (lambda msg: None)
        self.sent = self.failed = self.dropped = 0
        self.last_error: str | None = None
        self._q: deque = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = float("inf")
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def post(self, event: dict) -> None:
        """Queue ``event`` (never blocks)."""
        with self._cond:
            if len(self._q) >= self.max_queue:
                self._q.popleft()
                self.dropped += 1
            self._q.append(event)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._q and not self._closing:
                    self._cond.wait()
                if not self._q or time.monotonic() > self._deadline:
                    return
                event = self._q.popleft()
                self._busy = True
            self._send(event)
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _send(self, event: dict) -> None:
        body = json.dumps(event, default=str).encode()
        wait = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                req = request(self.url, body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    resp.read()
                self.sent += 1
                return
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or type(e).__name__
                self.last_error = f"HTTP {e.code}" if isinstance(e, urllib.error.HTTPError) else str(reason)
            if attempt < self.retries and time.monotonic() + wait < self._deadline:
                time.sleep(wait)
                wait *= 2
            else:
                break
        self.failed += 1
        if self.failed == 1 or self.failed % 100 == 0:
            self.log(f"warning: webhook {self.name}: {self.failed} event(s) not delivered ({self.last_error})")

    @property
    def pending(self) -> int:
        return len(self._q) + (1 if self._busy else 0)

    def close(self, grace_s: float = 2.0) -> dict:
        """Stop after at most ``grace_s`` more seconds of sending; the delivery counts."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + grace_s
            self._cond.notify_all()
        self._thread.join(grace_s + 0.1)
        return self.stats()

    def stats(self) -> dict:
        return {"url": self.name, "sent": self.sent, "failed": self.failed, "dropped": self.dropped,
                "pending": self.pending, "last_error": self.last_error}
