"""What a Triton server says about its own batching: Prometheus metrics and the statistics API.

Dynamic batching is visible two ways, both read here and compared by tests and the benchmark:
``nv_inference_count`` (clips) over ``nv_inference_exec_count`` (model executions) on the metrics
port, and the per-batch-size execution counts (``batch_stats``) of the v2 statistics endpoint.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from typing import Callable

_METRIC = re.compile(r'^(nv_inference_count|nv_inference_exec_count|nv_inference_request_success|'
                     r'nv_inference_request_failure)\{([^}]*)\}\s+([0-9.eE+-]+)\s*$')


def read_metrics(metrics_url: str, model: str, timeout: float = 5.0) -> dict:
    """Counters of ``model`` (all versions) from a Prometheus /metrics page."""
    with urllib.request.urlopen(metrics_url, timeout=timeout) as r:
        text = r.read().decode()
    totals = {"nv_inference_count": 0.0, "nv_inference_exec_count": 0.0,
              "nv_inference_request_success": 0.0, "nv_inference_request_failure": 0.0}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m and f'model="{model}"' in m.group(2):
            totals[m.group(1)] += float(m.group(3))
    clips, execs = totals["nv_inference_count"], totals["nv_inference_exec_count"]
    return {"inference_count": int(clips), "execution_count": int(execs),
            "request_success": int(totals["nv_inference_request_success"]),
            "request_failure": int(totals["nv_inference_request_failure"]),
            "mean_batch": clips / execs if execs else None}


def read_batch_stats(http_url: str, model: str, token: str | None = None, timeout: float = 5.0) -> dict[int, int]:
    """{batch size: executions} from GET /v2/models/<model>/stats (PyTriton needs its access token)."""
    req = urllib.request.Request(f"{http_url.rstrip('/')}/v2/models/{model}/stats")
    if token:
        req.add_header("triton-access-token", token)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = json.loads(r.read().decode())
    sizes: dict[int, int] = {}
    for ms in data.get("model_stats", []):
        for b in ms.get("batch_stats", []):
            n = int(b.get("compute_infer", {}).get("count", 0))
            if n:
                sizes[int(b["batch_size"])] = sizes.get(int(b["batch_size"]), 0) + n
    return dict(sorted(sizes.items()))


def batching_summary(metrics_url: str, http_url: str, model: str, token: str | None = None) -> dict:
    """Both views in one dict (JSON-able), with the largest batch the server executed."""
    m = read_metrics(metrics_url, model)
    sizes = read_batch_stats(http_url, model, token)
    return {**m, "batch_sizes": {str(k): v for k, v in sizes.items()}, "max_batch_seen": max(sizes) if sizes else 0}


def delta(after: dict, before: dict) -> dict:
    """Counters accumulated between two ``batching_summary`` calls (one run of a benchmark)."""
    out = {k: after[k] - before.get(k, 0) for k in ("inference_count", "execution_count", "request_success",
                                                     "request_failure")}
    out["mean_batch"] = out["inference_count"] / out["execution_count"] if out["execution_count"] else None
    sizes = {k: v - int(before.get("batch_sizes", {}).get(k, 0)) for k, v in after["batch_sizes"].items()}
    out["batch_sizes"] = {k: v for k, v in sizes.items() if v}
    out["max_batch_seen"] = max((int(k) for k in out["batch_sizes"]), default=0)
    return out


def _clips_counted(summary: dict) -> int:
    """Clips the server has counted: in both views when ``summary`` has both."""
    clips = summary["inference_count"]
    if "batch_sizes" in summary:
        clips = min(clips, sum(int(k) * v for k, v in summary["batch_sizes"].items()))
    return clips


def settled(read: Callable[[], dict], clips: int, timeout_s: float = 5.0, poll_s: float = 0.1) -> dict:
    """``read()`` (``read_metrics`` or ``batching_summary``) once the server has counted ``clips``
    clips in all, or after ``timeout_s``: Triton updates its counters just after it answers, so a
    read right after the last answer can miss it on a loaded machine."""
    deadline = time.monotonic() + timeout_s
    while True:
        summary = read()
        if _clips_counted(summary) >= clips or time.monotonic() >= deadline:
            return summary
        time.sleep(poll_s)
