"""The selective scan's forward pass over NumPy arrays, compiled by Numba: CPU inference without torch.

Why a separate kernel from ``scan_numba`` (training): inference needs no saved states, so this
loop keeps each row's N states in a small local array and writes only y, folds the step bias, the
softplus and the D skip in, and takes B/C in the exported ``SelectiveScan`` node's layout. It
imports numpy and numba only, so a deployment that runs the plugin form through ONNX Runtime
never loads torch.

Rows (batch x channel) are independent, so they are spread over Numba's threads (``prange`` over
b*d, not over b: batch 1 still uses every thread). Two safety rules:
- one launch at a time (a lock): Numba's fallback threading layer (``workqueue``, used when
  neither TBB nor OpenMP is installed) aborts the process when two threads launch parallel
  kernels at once, and servers call from several threads;
- the thread count is an argument of each launch, set on the launching thread right before it
  (Numba's setting is per thread; default: Numba's pool size). Numba's OpenMP layer leaves
  the launching thread's OpenMP thread count at its pool size after a launch with fewer threads;
  torch shares that runtime, so its thread count is put back when torch is loaded.
Compiled on first use and cached on disk when a cache location is writable (next to this file,
else Numba's user cache); a read-only install with no writable cache still compiles, in memory.
``first_call_s()`` reports what the first launch cost (compile or cache load included).
"""

from __future__ import annotations

import functools
import sys
import threading
import time

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_LOCK = threading.Lock()
_FIRST_CALL: list[float] = []         # wall time of the first launch in this process (compile or cache load)


@intrinsic
def _bits_to_float32(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (how 2**k is built without a call)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@numba.njit(fastmath=True, inline="always")
def _exp(x):  # pragma: no cover - compiled
    """exp(x) for float32 x, in arithmetic LLVM can vectorise (Numba's np.exp is a libm call per
    value, ~14x slower here): x = k ln2 + r with |r| <= ln2/2, exp(r) by its degree-6 Taylor
    polynomial (relative error < 5e-7), 2**k from the exponent bits. x is clamped to [-87, 88], so
    exp of anything below -87 returns 1.6e-38 instead of a smaller number (a decay that small
    wipes the state either way)."""
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
    r = x - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)     # ln2 in two parts
    p = np.float32(1.0) + r * (np.float32(1.0) + r * (np.float32(0.5) + r * (np.float32(1.0 / 6.0) + r * (
        np.float32(1.0 / 24.0) + r * (np.float32(1.0 / 120.0) + r * np.float32(1.0 / 720.0))))))
    return p * _bits_to_float32(np.int32((np.int32(k) + 127) << 23))


@numba.njit(fastmath=True, inline="always")
def _softplus(x):  # pragma: no cover - compiled
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)); log1p(y) for y in (0, 1] as
    2 atanh(s) = 2 (s + s^3/3 + ... + s^13/13), s = y / (2 + y) <= 1/3 (relative error < 1e-7)."""
    y = _exp(-abs(x))
    s = y / (np.float32(2.0) + y)
    s2 = s * s
    series = s * (np.float32(1.0) + s2 * (np.float32(1.0 / 3.0) + s2 * (np.float32(1.0 / 5.0) + s2 * (
        np.float32(1.0 / 7.0) + s2 * (np.float32(1.0 / 9.0) + s2 * (np.float32(1.0 / 11.0) + s2 * np.float32(1.0 / 13.0)))))))
    return max(x, np.float32(0.0)) + np.float32(2.0) * series


def _scan_rows(u, delta, A, B, C, D, bias, softplus, y):  # pragma: no cover - compiled
    batch, dim, length = u.shape
    groups, state = B.shape[1], A.shape[1]
    per_group = dim // groups
    for row in numba.prange(batch * dim):
        b = row // dim
        d = row - b * dim
        g = d // per_group
        h = np.zeros(state, np.float32)
        steps = np.empty(length, np.float32)
        for t in range(length):                  # independent across t: vectorised
            dt = delta[b, d, t] + bias[d]
            steps[t] = _softplus(dt) if softplus else dt
        for t in range(length):                  # the recurrence: vectorised across the N states
            dt = steps[t]
            x = dt * u[b, d, t]
            acc = np.float32(0.0)
            for n in range(state):
                hn = _exp(dt * A[d, n]) * h[n] + x * B[b, g, t, n]
                h[n] = hn
                acc += C[b, g, t, n] * hn
            y[b, d, t] = acc + D[d] * u[b, d, t]


@functools.lru_cache(maxsize=None)
def _kernel():
    """The compiled dispatcher, made on first use: with the on-disk cache when Numba has a writable
    place for it, else without (Numba raises at decoration time when no cache locator applies)."""
    try:
        return numba.njit(parallel=True, fastmath=True, cache=True)(_scan_rows)
    except RuntimeError:
        return numba.njit(parallel=True, fastmath=True, cache=False)(_scan_rows)


def launch_threads(wanted: int | None = None) -> int:
    """Threads a launch uses: ``wanted`` (>= 1), else Numba's pool size; capped at the pool size."""
    if wanted is not None and wanted < 1:
        raise ValueError(f"threads must be >= 1, got {wanted}")
    pool = numba.config.NUMBA_NUM_THREADS
    return max(1, min(wanted or pool, pool))


def first_call_s() -> float | None:
    """What the first launch in this process took (compile or on-disk cache load), None before it."""
    return _FIRST_CALL[0] if _FIRST_CALL else None


def selective_scan_forward(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus: bool = True,
                           threads: int | None = None) -> np.ndarray:
    """y (b, d, L) float32 of the S6 scan; u, delta (b, d, L); A (d, N); B, C (b, g, N, L) or (b, N, L);
    D, delta_bias (d,) or None. Same semantics as ``ops.scan.selective_scan_ref`` without z.
    ``threads``: this launch's thread count (default: Numba's pool size)."""
    u = np.ascontiguousarray(u, dtype=np.float32)
    delta = np.ascontiguousarray(delta, dtype=np.float32)
    batch, dim, length = u.shape
    B, C = np.asarray(B, dtype=np.float32), np.asarray(C, dtype=np.float32)
    if B.ndim == 3:
        B, C = B[:, None], C[:, None]
    if dim % B.shape[1]:
        raise ValueError(f"dim {dim} is not divisible by the {B.shape[1]} groups of B/C")
    Bt = np.ascontiguousarray(B.transpose(0, 1, 3, 2))      # (b, g, L, N): a step's N states contiguous
    Ct = np.ascontiguousarray(C.transpose(0, 1, 3, 2))
    A = np.ascontiguousarray(A, dtype=np.float32)
    zeros = np.zeros(dim, np.float32)
    D = zeros if D is None else np.ascontiguousarray(D, dtype=np.float32).reshape(dim)
    bias = zeros if delta_bias is None else np.ascontiguousarray(delta_bias, dtype=np.float32).reshape(dim)
    y = np.empty((batch, dim, length), np.float32)
    kernel = _kernel()
    torch = sys.modules.get("torch")              # never imported here; only looked after when loaded
    torch_threads = torch.get_num_threads() if torch else None
    with _LOCK:
        numba.set_num_threads(launch_threads(threads))
        t0 = time.perf_counter()
        kernel(u, delta, A, Bt, Ct, D, bias, bool(delta_softplus), y)
        if not _FIRST_CALL:
            _FIRST_CALL.append(time.perf_counter() - t0)
    if torch_threads is not None and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    return y
