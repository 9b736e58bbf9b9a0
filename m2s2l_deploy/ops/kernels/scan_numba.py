"""The selective scan for CPU training: forward and adjoint as two Numba-compiled loops.

Why: on a CPU the scans are most of a training step, and the PyTorch CPU form
(``scan.selective_scan_cpu``) spends it on ~18 small tensor ops per time step. Here one compiled
loop walks each (batch, channel) row through time with its N states in registers; the rows of a
batch element run on one thread (``prange`` over the batch), so the grouped B/C gradients and the
per-batch partial gradient of A need no locks. The adjoint is the same as the PyTorch form's:

    lambda[t] = dy[t] C[t] + exp(delta[t+1] A) lambda[t+1]
    dL/d(delta u)[t] = sum_n lambda[t] B[t],   dL/dB[t] = sum_d lambda[t] (delta u)[t],
    dL/dC[t] = sum_d dy[t] h[t],   dL/d(delta A)[t] = lambda[t] h[t-1] exp(delta[t] A)

Layouts are mamba-ssm's (u, delta: (b, d, L)), with B/C as (b, g, L, N) so the N states of one
time step are contiguous. fp32 only. Compiled on first use and cached on disk (``cache=True``).
Used for training only: Numba's fallback threading layer (``workqueue``, when neither TBB nor
OpenMP is available) aborts the process if two threads launch a parallel kernel at once, and
inference runs from server threads; a training step runs on one thread.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange


@njit(parallel=True, fastmath=True, cache=True)
def _forward(u, delta, A, B, C, H, E, y):  # pragma: no cover - compiled
    batch, dim, length = u.shape
    groups, state = B.shape[1], A.shape[1]
    per_group = dim // groups
    for b in prange(batch):
        h = np.zeros(state, np.float32)
        for d in range(dim):
            g = d // per_group
            h[:] = 0.0
            for t in range(length):
                dt = delta[b, d, t]
                x = dt * u[b, d, t]
                acc = np.float32(0.0)
                for n in range(state):
                    decay = np.exp(dt * A[d, n])
                    hn = decay * h[n] + x * B[b, g, t, n]
                    h[n] = hn
                    H[b, d, t, n] = hn
                    E[b, d, t, n] = decay
                    acc += C[b, g, t, n] * hn
                y[b, d, t] = acc


@njit(parallel=True, fastmath=True, cache=True)
def _backward(gy, u, delta, A, B, C, H, E, g_du, g_dx, g_A, g_B, g_C):  # pragma: no cover - compiled
    batch, dim, length = u.shape
    groups, state = B.shape[1], A.shape[1]
    per_group = dim // groups
    for b in prange(batch):
        lam = np.zeros(state, np.float32)
        decay_next = np.zeros(state, np.float32)
        for d in range(dim):
            g = d // per_group
            lam[:] = 0.0
            decay_next[:] = 0.0
            for t in range(length - 1, -1, -1):
                gyt = gy[b, d, t]
                dt = delta[b, d, t]
                du = dt * u[b, d, t]
                s_du = np.float32(0.0)
                s_dx = np.float32(0.0)
                for n in range(state):
                    ln = gyt * C[b, g, t, n] + decay_next[n] * lam[n]
                    lam[n] = ln
                    g_C[b, g, t, n] += gyt * H[b, d, t, n]
                    g_B[b, g, t, n] += ln * du
                    s_du += ln * B[b, g, t, n]
                    decay = E[b, d, t, n]
                    if t > 0:
                        gx = ln * H[b, d, t - 1, n] * decay        # dL / d(delta[t] A[d, n])
                        s_dx += gx * A[d, n]
                        g_A[b, d, n] += gx * dt
                    decay_next[n] = decay
                g_du[b, d, t] = s_du
                g_dx[b, d, t] = s_dx


def _threads() -> None:
    """Follow torch's intra-op thread count (``train --threads``), within Numba's pool."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


class NumbaRecurrence(torch.autograd.Function):
    """y[b, d, t] = sum_n C h with h the S6 recurrence; u, delta (b, d, L), A (d, N), B/C (b, g, L, N).

    Saves the states H and the decays E (each b*d*L*N fp32) for the adjoint.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        batch, dim, length = u.shape
        state = A.shape[1]
        H = u.new_empty(batch, dim, length, state)
        E = torch.empty_like(H)
        y = u.new_empty(batch, dim, length)
        _threads()
        _forward(u.detach().numpy(), delta.detach().numpy(), A.detach().numpy(), B.detach().numpy(),
                 C.detach().numpy(), H.numpy(), E.numpy(), y.numpy())
        ctx.save_for_backward(u, delta, A, B, C, H, E)
        return y

    @staticmethod
    def backward(ctx, gy):
        u, delta, A, B, C, H, E = ctx.saved_tensors
        g_du, g_dx = torch.empty_like(u), torch.empty_like(u)
        g_A = u.new_zeros(u.shape[0], *A.shape)
        g_B, g_C = torch.zeros_like(B), torch.zeros_like(C)
        _threads()
        _backward(gy.float().contiguous().numpy(), u.detach().numpy(), delta.detach().numpy(),
                  A.detach().numpy(), B.detach().numpy(), C.detach().numpy(), H.numpy(), E.numpy(),
                  g_du.numpy(), g_dx.numpy(), g_A.numpy(), g_B.numpy(), g_C.numpy())
        return g_du * delta, g_du * u + g_dx, g_A.sum(0), g_B, g_C


def recurrence(u, delta, A, B, C) -> torch.Tensor:
    """u, delta (b, d, L) fp32 (delta already biased/softplus'd); B/C (b, n, L) or (b, g, n, L) with
    d a multiple of g (``scan.selective_scan_numba`` checks it)."""
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    return NumbaRecurrence.apply(u.contiguous(), delta.contiguous(), A.float().contiguous(),
                                 B.float().transpose(2, 3).contiguous(), C.float().transpose(2, 3).contiguous())
