"""Every form of the Mamba (S6) selective scan, side by side, with one signature.

The recurrence, per batch b, channel d and state n:

    h[t] = exp(delta[t] * A[d, n]) * h[t-1] + delta[t] * B[n, t] * u[t]
    y[t] = sum_n C[n, t] * h[t, n]  (+ D[d] * u[t])  (* silu(z[t]))

Shapes follow mamba-ssm's ``selective_scan_fn``: u, delta, z: (batch, dim, L); A: (dim, N);
B, C: (batch, N, L) or grouped (batch, G, N, L) with dim divisible by G; D, delta_bias: (dim,).
All math is fp32 whatever the input dtype; the output takes u's dtype.

Forms:
- ``selective_scan_ref``: the sequential reference (L steps). Readable, slow, the ground truth.
- ``selective_scan_parallel``: a log-depth (Hillis-Steele) associative scan over the pairs
  (decay, input). ceil(log2 L) sequential steps instead of L. Every step multiplies decays that are
  each in (0, 1], so no exponent is ever positive and nothing overflows (no log-space division).
  Memory: each step holds two (batch, dim, N, L) fp32 tensors, i.e. 8*B*D*N*L bytes live, and
  2*ceil(log2 L) such tensors are kept for autograd when training. S6's decay depends on
  (channel, state), so Mamba-2's one-matmul SSD form does not apply; a chunked quadratic form
  would need B*D*N*L*chunk values instead.
- ``selective_scan_cpu``: the same recurrence time-major with a hand-written adjoint (backward), the
  fastest form on a CPU, where a step over one contiguous slice is cheap.
- ``selective_scan_numba``: the same recurrence and adjoint as two Numba-compiled loops
  (``kernels.scan_numba``), 2-4x faster than the CPU form per scan when training; without a
  gradient it runs the forward-only kernel (``kernels.scan_numba_forward``, the one ONNX Runtime's
  plugin op also runs), 3-5x faster again.
- ``kernels.scan_triton.selective_scan_triton``: the OpenAI-Triton GPU kernel (forward only), in
  its own package because it needs ``triton``; imported lazily from here.
- ``selective_scan_fn``: dispatcher used by the model (``choose_scan_form`` is its rule): on CUDA,
  mamba-ssm's kernel when importable, else the Triton kernel when no gradient is needed (inference,
  ``no_grad``/``inference_mode``), else the parallel form (training keeps autograd); on CPU the Numba
  form when Numba is importable (training and inference), else the CPU form. Its ``form`` argument names one
  form instead (benchmarks, tests, ``M2S2L.use_scan_form``).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def _fp32_inputs(u, delta, delta_bias, delta_softplus):
    """u and the effective step delta (bias added, softplus applied) in fp32."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    return u.float(), delta


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """Shared preamble: fp32 casts, bias/softplus, and broadcast of grouped B/C to (b, d, n, L)."""
    dtype_in = u.dtype
    u, delta = _fp32_inputs(u, delta, delta_bias, delta_softplus)
    A = A.float()
    batch, dim, length = u.shape
    B = _expand_groups(B.float(), dim)
    C = _expand_groups(C.float(), dim)
    return dtype_in, u, delta, A, B, C, batch, dim, length


def _check_groups(M: torch.Tensor, dim: int) -> int:
    """Groups of B or C ((b, n, L): 1, (b, g, n, L): g); every group must hold dim/g channels."""
    groups = 1 if M.dim() == 3 else M.shape[1]
    if dim % groups:
        raise ValueError(f"dim {dim} is not divisible by the {groups} groups of B/C")
    return groups


def _expand_groups(M: torch.Tensor, dim: int) -> torch.Tensor:
    """(b, n, L) -> (b, 1, n, L); (b, g, n, L) -> (b, dim, n, L) with each group repeated dim/g times."""
    groups = _check_groups(M, dim)
    if M.dim() == 3:
        return M.unsqueeze(1)
    return M.repeat_interleave(dim // groups, dim=1)


def _finish(y, u, D, z, dtype_in):
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype_in)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Sequential reference: one time step per loop iteration (mamba-ssm semantics)."""
    dtype_in, u, delta, A, B, C, batch, dim, length = _prepare(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaBu = torch.einsum("bdl,bdnl,bdl->bdln", delta, B.expand(batch, dim, -1, -1), u)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = deltaA[:, :, t] * h + deltaBu[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", h, C[:, :, :, t].expand(batch, dim, -1)))
    y = torch.stack(ys, dim=2)
    out = _finish(y, u, D, z, dtype_in)
    return (out, h) if return_last_state else out


class _one_thread:
    """Run a block of many tiny ops on one intra-op thread.

    Each per-step op touches a cache-sized slice; splitting it across threads gains nothing, and
    when another process holds a core every op's thread barrier waits for a descheduled thread
    (measured here: 54 s instead of 1.3 s per training step with two busy processes on 2 cores).
    """

    def __enter__(self):
        self.saved = torch.get_num_threads()
        if self.saved != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.saved != 1:
            torch.set_num_threads(self.saved)
        return False


class _FusedRecurrence(torch.autograd.Function):
    """The core scan, one time step at a time on (batch, dim, N) slices, with a hand-written adjoint.

    Inputs are time-major: u, delta (L, b, d); A (d, n); B, C (L, b, g, 1, n). Nothing of size
    (L, b, d, n) is materialised except the states H, kept for the backward pass. The adjoint
    lambda[t] = dy[t] C[t] + exp(delta[t+1] A) lambda[t+1] runs backwards and every gradient is
    read off it step by step, so each step's working set stays in cache.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        length, batch, dim = u.shape
        groups, state = B.shape[2], B.shape[4]
        du = delta * u
        H = u.new_empty(length, batch, dim, state)
        y = u.new_empty(length, batch, dim)
        h = u.new_zeros(batch, dim, state)
        with _one_thread():
            for t in range(length):
                decay = torch.exp(delta[t].unsqueeze(-1) * A)
                drive = (du[t].view(batch, groups, -1, 1) * B[t]).view(batch, dim, state)
                h = torch.addcmul(drive, decay, h)
                H[t] = h
                y[t] = (h.view(batch, groups, -1, state) * C[t]).sum(-1).view(batch, dim)
        ctx.save_for_backward(u, delta, A, B, C, H)
        return y

    @staticmethod
    def backward(ctx, gy):
        u, delta, A, B, C, H = ctx.saved_tensors
        length, batch, dim = u.shape
        groups, state = B.shape[2], B.shape[4]
        du = delta * u
        g_du = torch.empty_like(u)
        g_delta = torch.empty_like(delta)
        g_A = torch.zeros_like(A)
        g_B = torch.empty_like(B)
        g_C = torch.empty_like(C)
        lam = None
        decay_next = None
        with _one_thread():
            for t in range(length - 1, -1, -1):
                gy_t = gy[t].view(batch, groups, -1, 1)
                g_C[t] = (gy_t * H[t].view(batch, groups, -1, state)).sum(2, keepdim=True)
                lam_t = (gy_t * C[t]).view(batch, dim, state)
                lam = lam_t if lam is None else torch.addcmul(lam_t, decay_next, lam)
                lam_g = lam.view(batch, groups, -1, state)
                g_du[t] = (lam_g * B[t]).sum(-1).view(batch, dim)
                g_B[t] = (lam_g * du[t].view(batch, groups, -1, 1)).sum(2, keepdim=True)
                decay = torch.exp(delta[t].unsqueeze(-1) * A)
                if t > 0:
                    g_x = lam * H[t - 1] * decay                      # d loss / d (delta[t] * A)
                    g_delta[t] = (g_x * A).sum(-1)
                    g_A += (g_x * delta[t].unsqueeze(-1)).sum(0)
                else:
                    g_delta[t] = 0.0
                decay_next = decay
        return g_du * delta, g_du * u + g_delta, g_A, g_B, g_C


def _grouped_time_major(M: torch.Tensor) -> torch.Tensor:
    """B or C, (b, n, L) or (b, g, n, L) -> contiguous (L, b, g, 1, n) for broadcasting over channels."""
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M.permute(3, 0, 1, 2).unsqueeze(3).contiguous()


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The fast form on CPU: the sequential recurrence fused per time step, with its adjoint.

    A CPU runs a step over a cache-sized (batch, dim, N) slice far faster than the log-depth
    form's log2(L) passes over the whole (batch, dim, N, L) tensor. Memory: the states,
    4*B*D*N*L bytes, kept for the backward pass.
    """
    dtype_in = u.dtype
    u32, delta = _fp32_inputs(u, delta, delta_bias, delta_softplus)
    _check_groups(B, u.shape[1])
    y = _FusedRecurrence.apply(u32.permute(2, 0, 1).contiguous(), delta.permute(2, 0, 1).contiguous(),
                               A.float().contiguous(), _grouped_time_major(B.float()),
                               _grouped_time_major(C.float()))
    out = _finish(y.permute(1, 2, 0), u32, D, z, dtype_in)
    if return_last_state:
        return out, _last_state(u32, delta, A.float(), B.float())
    return out


def selective_scan_numba(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """The CPU form compiled by Numba: with a gradient, the recurrence and its adjoint
    (``kernels.scan_numba``; memory: the states and the decays, 8*B*D*N*L bytes, kept for the
    backward pass); without one, the forward-only kernel (``kernels.scan_numba_forward``), which
    stores nothing but y.
    """
    kernel = _numba_kernel()
    if kernel is None:
        raise RuntimeError("scan form 'numba' needs Numba (pip install numba)")
    dtype_in = u.dtype
    _check_groups(B, u.shape[1])
    if not _needs_grad(u, delta, A, B, C, D, z, delta_bias) and not u.is_cuda:
        forward = _numba_forward()
        u32 = u.float()
        y = forward(*(t.detach().float().numpy() for t in (u32, delta, A, B, C)),
                    D=None if D is None else D.detach().float().numpy(),
                    delta_bias=None if delta_bias is None else delta_bias.detach().float().numpy(),
                    delta_softplus=delta_softplus, threads=torch.get_num_threads())
        out = _finish(torch.from_numpy(y), u32, None, z, dtype_in)      # D is folded into the kernel
        if return_last_state:
            _, delta = _fp32_inputs(u, delta, delta_bias, delta_softplus)
            return out, _last_state(u32, delta, A.float(), B.float())
        return out
    u32, delta = _fp32_inputs(u, delta, delta_bias, delta_softplus)
    out = _finish(kernel(u32, delta, A, B, C), u32, D, z, dtype_in)
    if return_last_state:
        return out, _last_state(u32, delta, A.float(), B.float())
    return out


def _last_state(u, delta, A, B):
    """Final state h[L-1] (b, d, n), from the parallel form's closed pieces (used rarely)."""
    decay = torch.exp(delta.unsqueeze(2) * A[None, :, :, None])
    drive = (delta * u).unsqueeze(2) * _expand_groups(B, u.shape[1])
    return associative_scan_linear(decay, drive)[..., -1]


def associative_scan_linear(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All prefixes of h[t] = a[t] * h[t-1] + b[t] (h[-1] = 0) along the last axis, in log depth.

    Hillis-Steele doubling: after the step with offset k, position t holds the composition of the
    k*2 elements ending at t. Built from slicing and concatenation only (autograd- and
    ONNX-friendly, no in-place writes). Requires 0 <= a <= 1 for the no-overflow guarantee.
    """
    length = a.shape[-1]
    offset = 1
    while offset < length:
        a_prev, b_prev = a[..., :-offset], b[..., :-offset]
        a_cur, b_cur = a[..., offset:], b[..., offset:]
        b = torch.cat([b[..., :offset], a_cur * b_prev + b_cur], dim=-1)
        a = torch.cat([a[..., :offset], a_cur * a_prev], dim=-1)
        offset *= 2
    return b


def scan_steps(length: int) -> int:
    """Sequential steps the parallel form takes for a sequence of this length."""
    return max(0, math.ceil(math.log2(length))) if length > 1 else 0


def selective_scan_parallel(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                            return_last_state=False):
    """Log-depth parallel form: same numbers as ``selective_scan_ref`` in ceil(log2 L) steps."""
    dtype_in, u, delta, A, B, C, batch, dim, length = _prepare(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    decay = torch.exp(delta.unsqueeze(2) * A[None, :, :, None])        # (b, d, n, L), in (0, 1]
    drive = (delta * u).unsqueeze(2) * B                                # (b, d, n, L)
    h = associative_scan_linear(decay, drive)
    y = (h * C).sum(dim=2)
    out = _finish(y, u, D, z, dtype_in)
    return (out, h[..., -1]) if return_last_state else out


@functools.lru_cache(maxsize=None)
def _mamba_ssm_kernel():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as kernel
    except Exception:  # mamba-ssm is an optional extra; any import failure means "not available"
        return None
    return kernel


@functools.lru_cache(maxsize=None)
def _triton_kernel():
    """The Triton kernel function, or None when OpenAI Triton is not importable (cached)."""
    try:
        from .kernels.scan_triton import selective_scan_triton
    except Exception:  # triton is an optional extra (it ships with CUDA builds of torch)
        return None
    return selective_scan_triton


@functools.lru_cache(maxsize=None)
def _numba_kernel():
    """``kernels.scan_numba.recurrence``, or None when Numba is not importable (cached)."""
    try:
        from .kernels.scan_numba import recurrence
    except Exception:  # a broken or missing Numba install means "use the PyTorch CPU form"
        return None
    return recurrence


@functools.lru_cache(maxsize=None)
def _numba_forward():
    """``kernels.scan_numba_forward.selective_scan_forward`` (Numba assumed importable: callers
    check ``_numba_kernel`` first)."""
    from .kernels.scan_numba_forward import selective_scan_forward
    return selective_scan_forward


SCAN_FORMS = ("ref", "parallel", "cpu", "numba", "triton", "mamba_ssm")


def check_scan_form(name: str | None) -> str | None:
    """``name`` when it is a known form (None = the automatic choice); ValueError otherwise."""
    if name is not None and name not in SCAN_FORMS:
        raise ValueError(f"unknown scan form {name!r} (choose from {', '.join(SCAN_FORMS)})")
    return name


def choose_scan_form(on_cuda: bool, needs_grad: bool, have_mamba_ssm: bool, have_triton: bool,
                     have_numba: bool = False) -> str:
    """The dispatcher's rule: which form runs a scan."""
    if not on_cuda:
        return "numba" if have_numba else "cpu"
    if have_mamba_ssm:
        return "mamba_ssm"
    if have_triton and not needs_grad:
        return "triton"
    return "parallel"


def scan_form_for(on_cuda: bool, needs_grad: bool) -> str:
    """The form ``selective_scan_fn`` runs here, given what is importable (training records it)."""
    return choose_scan_form(on_cuda, needs_grad, on_cuda and _mamba_ssm_kernel() is not None,
                            on_cuda and _triton_kernel() is not None,
                            not on_cuda and _numba_kernel() is not None)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, form=None):
    """The scan the model calls: ``form`` names one of SCAN_FORMS, None lets ``choose_scan_form`` pick.

    The form is an argument, never a process-wide switch: each scan site of the model carries its
    own (``M2S2L.use_scan_form``), so two models, or two threads, never change each other's form.
    """
    form = check_scan_form(form) or scan_form_for(u.is_cuda, _needs_grad(u, delta, A, B, C, D, z, delta_bias))
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if form == "cpu":
        return selective_scan_cpu(*args)
    if form == "numba":
        return selective_scan_numba(*args)
    if form == "parallel":
        return selective_scan_parallel(*args)
    if form == "ref":
        return selective_scan_ref(*args)
    if form == "triton":
        kernel = _triton_kernel()
        if kernel is None:
            raise RuntimeError("scan form 'triton' needs OpenAI Triton (pip install 'm2s2l-deploy[triton]')")
        return kernel(*args)
    kernel = _mamba_ssm_kernel()
    if kernel is None:
        raise RuntimeError("scan form 'mamba_ssm' needs mamba-ssm installed")
    return kernel(*args)


def scan_flops(batch: int, dim: int, state: int, length: int, with_z: bool, with_d: bool) -> int:
    """FLOPs of one selective scan by formula (multiply and add counted separately).

    Per (b, d, n, t): deltaA product + exp (2), deltaB*u (2), h = a*h + b (2), C*h and the sum
    over n (2) -> 8; per (b, d, t): D skip (2), z gate with silu (~5). This counts the recurrent
    (sequential) form, the one a fused kernel executes; FlopCounterMode sees none of it.
    """
    per_state = 8 * batch * dim * state * length
    per_chan = batch * dim * length * ((2 if with_d else 0) + (5 if with_z else 0))
    return per_state + per_chan
