"""Events of a live run as JSON lines, each written and flushed the moment it happens.

Why lines, appended: an operator's tooling (``tail -f``, a log shipper) must see an alert when it is
raised, not when the run ends, and a run lasting days must never rewrite what it already wrote.
``EventLog`` writes every event to a file (rotated by size: ``events.jsonl`` -> ``events.jsonl.1``
-> ... ``.KEEP``, the oldest deleted) and/or to a text stream (stdout), one complete line per
``write`` under a lock, so the reader threads and scorers of every source can share it.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import TextIO

from ..errors import UserError
from .alerts import iso_time


def _finite(value):
    """JSON has no NaN or infinity: such floats become null (an event must stay valid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class EventLog:
    """``write(event)`` appends one JSON line (``time`` added when missing) to ``path`` and/or ``stream``."""

    def __init__(self, path: Path | None = None, stream: TextIO | None = None, *, max_bytes: int = 100 << 20,
                 keep: int = 5):
        if max_bytes < 1024 or keep < 1:
            raise UserError("the events file must be allowed at least 1 KiB and one rotated file")
        self.path, self.stream, self.max_bytes, self.keep = (Path(path) if path else None), stream, max_bytes, keep
        self.lines = 0
        self._lock = threading.Lock()
        self._file = None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")
            except OSError as e:
                raise UserError(f"cannot write events file {self.path}: {e.strerror or e}") from None

    def write(self, event: dict) -> dict:
        event = _finite({"time": iso_time(time.time()), **event} if "time" not in event else dict(event))
        line = json.dumps(event, default=str, allow_nan=False) + "\n"
        with self._lock:
            if self._file is not None:
                if self._file.tell() > 0 and self._file.tell() + len(line.encode()) > self.max_bytes:
                    self._rotate()
                self._file.write(line)
                self._file.flush()
            if self.stream is not None:
                self.stream.write(line)
                self.stream.flush()
            self.lines += 1
        return event

    def _rotate(self) -> None:
        self._file.close()
        for i in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            newer = self.path if i == 1 else self.path.with_name(f"{self.path.name}.{i - 1}")
            if newer.exists():
                os.replace(newer, older)
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
