"""Parameter and FLOP counts per clip (``m2s2l-deploy info``).

FlopCounterMode counts convolutions, matmuls and einsums (2 FLOPs per multiply-add) but none of a
selective scan's elementwise recurrence, whatever form runs; the scans are therefore added by
formula (``scan.scan_flops``) for the recurrent form a fused kernel executes, from the shapes
recorded at every scan call site during one forward pass.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..ops.scan import scan_flops
from .config import ModelConfig
from .m2s2l import M2S2L


def model_info(cfg: ModelConfig) -> dict:
    params = sum(p.numel() for p in M2S2L(cfg).parameters())
    with torch.device("meta"):
        model = M2S2L(cfg).eval().requires_grad_(False)  # FlopCounterMode's module tracker dislikes no_grad
        clip = torch.zeros(1, cfg.clip_len, cfg.in_channels, cfg.height, cfg.width)
    sites = model.scan_sites()
    for s in sites:
        s.records = []
    with FlopCounterMode(display=False) as counter:
        model(clip)
    dense = int(counter.get_total_flops())
    scans = [r for s in sites for r in s.records]
    for s in sites:
        s.records = None
    scan_total = sum(scan_flops(b, d, n, length, with_z=False, with_d=True) for b, d, n, length in scans)
    return {
        "preset": cfg.preset,
        "input": {"clip_len": cfg.clip_len, "channels": cfg.in_channels, "height": cfg.height, "width": cfg.width},
        "parameters": int(params),
        "gflops_per_clip": round((dense + scan_total) / 1e9, 3),
        "gflops_dense": round(dense / 1e9, 3),
        "gflops_scan": round(scan_total / 1e9, 3),
        "scan_calls": len(scans),
        "scan_form_counted": "recurrent (sequential) form by formula: 8 FLOPs per (batch, channel, state, step) + D skip",
        "longest_scan": max((r[3] for r in scans), default=0),
    }
