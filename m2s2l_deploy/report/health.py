"""Latency percentiles of a run that lasts days, in fixed memory.

A live run cannot keep every frame's latency; ``Histogram`` counts them in log-spaced bins (about
2.3 % wide, from 10 us to 1000 s), so p50/p99 over the whole run cost 800 integers whatever its
length, accurate to a bin.
"""

from __future__ import annotations

import bisect
import math


class Histogram:
    def __init__(self, lo_s: float = 1e-5, hi_s: float = 1e3, per_decade: int = 100):
        n = int(round(math.log10(hi_s / lo_s) * per_decade))
        self.edges = [lo_s * 10 ** (i / per_decade) for i in range(n + 1)]
        self.counts = [0] * (n + 2)
        self.n = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.edges, seconds)] += 1
        self.n += 1
        self.max = max(self.max, seconds)

    def percentile(self, q: float) -> float | None:
        """The upper edge of the bin holding the q-th percentile (seconds); None before any value."""
        if not self.n:
            return None
        want, seen = q / 100.0 * self.n, 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= want and c:
                return min(self.edges[min(i, len(self.edges) - 1)], self.max)
        return self.max

    def summary_ms(self) -> dict:
        def ms(v):
            return None if v is None else round(v * 1000.0, 2)
        return {"p50": ms(self.percentile(50)), "p99": ms(self.percentile(99)),
                "max": ms(self.max if self.n else None), "n": self.n}
