"""What every opened source is, whatever it reads from, and the two ways opening or reading it fails.

Kept apart from ``sources`` (which parses SOURCE text and picks an opener) so that the openers in
their own modules (``mjpeg``) and the readers above (``stream``, ``live``) share one base.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import DataError


class SourceError(DataError):
    """A source that cannot be opened right now (unreachable, refused, no such device)."""


class StreamLost(Exception):
    """An open stream stopped giving frames: closed by the other side, or stalled (no bytes).
    The message says why, without the source's name (the reader adds it)."""


class OpenedSource:
    """An open source. ``fps``: nominal rate (None when unknown); ``size``: (width, height) or None;
    ``n_frames``: frame count of a file or folder (None for streams). Iterate ``frames()`` for
    ``(index, timestamp_s, BGR frame)``; a stream raises StreamLost when it drops or stalls."""

    fps: float | None = None
    size: tuple[int, int] | None = None
    n_frames: int | None = None
    decode_s: float = 0.0          # time spent decoding, for bench's timing

    def frames(self) -> Iterator[tuple[int, float, np.ndarray]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file, connection or device (also when iteration stopped early)."""
