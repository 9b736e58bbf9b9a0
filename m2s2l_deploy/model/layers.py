"""Building blocks: the scan op, 2D selective scan (SS2D, 4 directions) and the temporal Mamba."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import scan as scan_forms


class ScanOp(nn.Module):
    """One selective scan call site. A module (not a function) so an exporter can swap the form.

    While ``records`` is a list the op only records (batch, dim, state, length) and returns zeros:
    the FLOP report counts scans by formula (FlopCounterMode cannot see inside them) and needs
    shapes, not values, so it runs the model on the meta device without computing any scan.

    ``form`` names the scan form this site runs (one of ``ops.scan.SCAN_FORMS``); None lets the
    dispatcher choose by device and autograd (the default, and what training records).
    """

    def __init__(self):
        super().__init__()
        self.records: list | None = None
        self.form: str | None = None

    def forward(self, u, delta, A, B, C, D, delta_bias):
        if self.records is not None:
            self.records.append((u.shape[0], u.shape[1], A.shape[1], u.shape[2]))
            return torch.zeros_like(u)
        return scan_forms.selective_scan_fn(u, delta, A, B, C, D, None, delta_bias, True, form=self.form)


def _init_dt(dt_proj_bias: torch.Tensor, dt_min=1e-3, dt_max=1e-1):
    """Mamba's dt initialisation: softplus(bias) log-uniform in [dt_min, dt_max]."""
    with torch.no_grad():
        dt = torch.exp(torch.rand_like(dt_proj_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt_proj_bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def _a_log(channels: int, d_state: int) -> torch.Tensor:
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(channels, 1)


class SS2D(nn.Module):
    """VMamba-style 2D selective scan on a (B, H, W, C) token grid.

    The grid is read as 4 sequences (row-major, column-major and both reversed); each direction
    has its own projections, A and D, and all four run as one grouped scan (groups = directions).
    The four outputs are mapped back to the grid and summed.
    """

    directions = 4

    def __init__(self, dim: int, d_state: int = 8, expand: int = 2):
        super().__init__()
        inner = expand * dim
        self.inner, self.d_state = inner, d_state
        self.dt_rank = math.ceil(dim / 16)
        k = self.directions
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.dwconv = nn.Conv2d(inner, inner, 3, padding=1, groups=inner)
        self.x_proj_weight = nn.Parameter(torch.randn(k, self.dt_rank + 2 * d_state, inner) / math.sqrt(inner))
        self.dt_proj_weight = nn.Parameter(torch.randn(k, inner, self.dt_rank) / math.sqrt(self.dt_rank))
        self.dt_proj_bias = nn.Parameter(torch.empty(k, inner))
        _init_dt(self.dt_proj_bias)
        self.A_log = nn.Parameter(_a_log(k * inner, d_state))
        self.D = nn.Parameter(torch.ones(k * inner))
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.scan = ScanOp()

    def forward(self, x):
        b, h, w, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.dwconv(x.permute(0, 3, 1, 2)))                      # (b, inner, h, w)
        rows = x.flatten(2)
        cols = x.transpose(2, 3).flatten(2)
        xs = torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)  # (b, 4, inner, L)
        # Per-direction projections as broadcast matmuls (k, c, d) @ (b, k, d, L): they export as
        # MatMul, which ONNX Runtime and TensorRT run as batched GEMMs (an Einsum took 16% of ORT's time).
        proj = torch.matmul(self.x_proj_weight, xs)                           # (b, 4, c, L)
        dts, Bs, Cs = proj.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.matmul(self.dt_proj_weight, dts)                          # (b, 4, inner, L)
        length = h * w
        y = self.scan(xs.reshape(b, -1, length), dts.reshape(b, -1, length), -torch.exp(self.A_log),
                      Bs, Cs, self.D, self.dt_proj_bias.reshape(-1))
        y = y.view(b, 4, self.inner, length)
        y_rows = y[:, 0] + y[:, 2].flip(-1)
        y_cols = (y[:, 1] + y[:, 3].flip(-1)).view(b, self.inner, w, h).transpose(2, 3).reshape(b, self.inner, length)
        y = (y_rows + y_cols).transpose(1, 2).view(b, h, w, self.inner)
        return self.out_proj(self.out_norm(y) * F.silu(z))


class VSSBlock(nn.Module):
    """Pre-norm residual SS2D, optionally followed by a residual channel MLP."""

    def __init__(self, dim: int, d_state: int, expand: int, mlp_ratio: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ss2d = SS2D(dim, d_state, expand)
        self.mlp = None
        if mlp_ratio > 0:
            hidden = int(dim * mlp_ratio)
            self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.ss2d(self.norm(x))
        if self.mlp is not None:
            x = x + self.mlp(x)
        return x


class TemporalMamba(nn.Module):
    """Mamba over time for every spatial token, at one time scale (frame stride).

    Input (N, T, C) token histories ending at the target frame; the sequence is frames
    T-1, T-1-s, T-1-2s, ... in chronological order. Returns the state read out at the target (N, C).
    """

    def __init__(self, dim: int, d_state: int, expand: int, stride: int):
        super().__init__()
        inner = expand * dim
        self.inner, self.d_state, self.stride = inner, d_state, stride
        self.dt_rank = math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, 2, groups=inner)               # causal: left-padded by 1
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        _init_dt(self.dt_proj.bias)
        self.A_log = nn.Parameter(_a_log(inner, d_state))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.scan = ScanOp()

    def forward(self, tokens):
        t = tokens.shape[1]
        # A slice, not an index list: a list becomes a host tensor copied to the device on every
        # call, which CUDA graph capture refuses (found on the H100, docs/gpu.md).
        seq = tokens[:, (t - 1) % self.stride::self.stride]                  # (N, Ts, C)
        x, z = self.in_proj(seq).chunk(2, dim=-1)
        x = F.silu(self._causal_conv(x))                                     # (N, Ts, inner)
        proj = self.x_proj(x)                                                # (N, Ts, R + 2S)
        x = x.transpose(1, 2)                                                # (N, inner, Ts)
        dt, Bs, Cs = proj.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)                # bias enters as delta_bias
        y = self.scan(x, delta, -torch.exp(self.A_log), Bs.transpose(1, 2).contiguous(),
                      Cs.transpose(1, 2).contiguous(), self.D, self.dt_proj.bias)
        y_last = y[:, :, -1] * F.silu(z[:, -1])
        return self.out_proj(y_last)

    def _causal_conv(self, x):
        """Width-2 depthwise causal conv over time of (N, Ts, inner). On CUDA as two multiply-adds:
        cuDNN's depthwise conv1d kernel took 13% of a paper-preset fp16 call on an H100 (docs/gpu.md).
        Elsewhere the Conv node that the ONNX exporter and the INT8 quantizer expect."""
        if x.is_cuda:
            return causal_depthwise_conv2(x, self.conv.weight, self.conv.bias)
        return self.conv(F.pad(x.transpose(1, 2), (1, 0))).transpose(1, 2)


def causal_depthwise_conv2(x, weight, bias):
    """y[t] = w0 * x[t-1] + w1 * x[t] + b per channel, x[-1] = 0; x (N, T, C), weight (C, 1, 2)."""
    w = weight[:, 0].to(x.dtype)
    prev = F.pad(x, (0, 0, 1, 0))[:, :-1]
    return torch.addcmul(torch.addcmul(bias.to(x.dtype), x, w[:, 1]), prev, w[:, 0])


class MultiTemporal(nn.Module):
    """Temporal Mamba at several time scales, fused with the target frame's own token."""

    def __init__(self, dim: int, d_state: int, expand: int, scales: tuple[int, ...]):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.branches = nn.ModuleList(TemporalMamba(dim, d_state, expand, s) for s in scales)
        self.fuse = nn.Linear(dim * len(scales), dim)
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, feats):
        """feats (B, T, h, w, C) -> fused target-frame features (B, h, w, C)."""
        b, t, h, w, c = feats.shape
        tokens = self.norm(feats.permute(0, 2, 3, 1, 4).reshape(b * h * w, t, c))
        fused = self.fuse(torch.cat([br(tokens) for br in self.branches], dim=-1))
        out = tokens[:, -1] + fused
        return self.out_norm(out).view(b, h, w, c)
