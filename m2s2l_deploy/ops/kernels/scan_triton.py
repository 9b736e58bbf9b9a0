"""The selective scan as an OpenAI-Triton forward kernel (inference), with its host-side launcher.

Same semantics as ``scan.selective_scan_ref`` (mamba-ssm's): fp32 state and math whatever the
input dtype (fp32, fp16, bf16), delta bias and softplus, D skip, optional z gate, B/C shared
(batch, N, L) or grouped (batch, G, N, L). The output takes u's dtype.

Why it is shaped this way: the scan moves ~20 bytes per (batch, channel, step) and does ~8 flops
per state, so it is memory-bound, and its recurrence must never wait on memory. A plain kernel
(one program per 32 channels, one step per loop iteration) was latency-bound at 9% of the memory
floor on the lent H100 (docs/gpu.md).

- Many small programs: one warp per (batch, group, 8 channels) for N = 16, 1536 programs for
  batch 32 x 384 channels. A program's tiles are [state, channel, time]; Triton's default layout
  gives the lanes to the channels first and the states after them, so each thread owns ~4 states
  of one channel: the sum over states is 3 in-thread adds and 2 shuffles, and per-(channel, step)
  work (softplus, D skip, gate) is repeated on 4 lanes, not 16.
- Time is walked in tiles of BLOCK_T steps loaded as blocks (u, delta, z: [channel, time]; B, C:
  [state, time]), contiguous along time (coalesced vector loads); B and C are loaded once per
  program for its 8 channels.
- Software pipelining: the time loop is ``tl.range(num_stages=STAGES)``, so Triton issues the
  loads of the next STAGES-1 tiles asynchronously (cp.async into shared memory on Ampere/Hopper)
  while the current tile is computed: ~32 steps per channel in flight.
- Inside a tile the recurrence is unrolled on registers: decays exp2(delta*A*log2 e) and inputs
  delta*B*u are computed for the whole tile at once, split into per-step slices (``tl.split``,
  free because time is held inside the thread), and the only serial dependency is one fused
  multiply-add per state and step. Each step's y is stored directly (no re-assembly of the tile,
  which made Triton shuffle layouts through shared memory).

Fixed launch configurations (no autotune sweep) come from ``launch_config``. Under
``TRITON_INTERPRET=1`` (set before this module is imported) the very same kernel and launch grid
run on CPU tensors through Triton's interpreter; that is how CI tests it.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)     # a global a kernel may read must be a constexpr


def interpreted() -> bool:
    """True when this module's kernel was built by Triton's interpreter (TRITON_INTERPRET=1 at import)."""
    return _INTERPRETED


@triton.jit
def _split4(x):
    """[..., 4] -> its four slices [...] in time order (the last axis is held inside each thread)."""
    x = tl.reshape(x, x.shape[:-1] + [2, 2])
    even, odd = tl.split(x)        # positions (0, 2) and (1, 3)
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    return x0, x1, x2, x3


@triton.jit
def _split8(x):
    x = tl.reshape(x, x.shape[:-1] + [4, 2])
    even, odd = tl.split(x)        # positions (0, 2, 4, 6) and (1, 3, 5, 7)
    x0, x2, x4, x6 = _split4(even)
    x1, x3, x5, x7 = _split4(odd)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _step(h, a, bu, c, extra, gate, y_ptrs, mask):
    """One time step for all (state, channel) chains: h = a*h + bu; y = (sum_n c*h + extra) * gate."""
    h = a * h + bu
    y = (tl.sum(h * c[:, None], axis=0) + extra) * gate
    tl.store(y_ptrs, y.to(y_ptrs.dtype.element_ty), mask=mask)
    return h


@triton.jit
def _tile4(h, dA, dBu, Ct, extra, gate, y_ptrs, mask):
    """The four steps of a time tile, in order. mask [BLOCK_D, 4]: which outputs exist."""
    a0, a1, a2, a3 = _split4(dA)
    b0, b1, b2, b3 = _split4(dBu)
    c0, c1, c2, c3 = _split4(Ct)
    e0, e1, e2, e3 = _split4(extra)
    g0, g1, g2, g3 = _split4(gate)
    p0, p1, p2, p3 = _split4(y_ptrs)
    m0, m1, m2, m3 = _split4(mask)
    h = _step(h, a0, b0, c0, e0, g0, p0, m0)
    h = _step(h, a1, b1, c1, e1, g1, p1, m1)
    h = _step(h, a2, b2, c2, e2, g2, p2, m2)
    h = _step(h, a3, b3, c3, e3, g3, p3, m3)
    return h


@triton.jit
def _tile8(h, dA, dBu, Ct, extra, gate, y_ptrs, mask):
    """The eight steps of a time tile, in order."""
    a0, a1, a2, a3, a4, a5, a6, a7 = _split8(dA)
    b0, b1, b2, b3, b4, b5, b6, b7 = _split8(dBu)
    c0, c1, c2, c3, c4, c5, c6, c7 = _split8(Ct)
    e0, e1, e2, e3, e4, e5, e6, e7 = _split8(extra)
    g0, g1, g2, g3, g4, g5, g6, g7 = _split8(gate)
    p0, p1, p2, p3, p4, p5, p6, p7 = _split8(y_ptrs)
    m0, m1, m2, m3, m4, m5, m6, m7 = _split8(mask)
    h = _step(h, a0, b0, c0, e0, g0, p0, m0)
    h = _step(h, a1, b1, c1, e1, g1, p1, m1)
    h = _step(h, a2, b2, c2, e2, g2, p2, m2)
    h = _step(h, a3, b3, c3, e3, g3, p3, m3)
    h = _step(h, a4, b4, c4, e4, g4, p4, m4)
    h = _step(h, a5, b5, c5, e5, g5, p5, m5)
    h = _step(h, a6, b6, c6, e6, g6, p6, m6)
    h = _step(h, a7, b7, c7, e7, g7, p7, m7)
    return h


@triton.jit
def _softplus(x):
    """log(1 + exp(x)) without overflow and accurate for very negative x (torch's softplus)."""
    e = tl.exp(-tl.abs(x))
    log1p = tl.where(e < 1e-2, e * (1.0 - e * (0.5 - e * 0.3333333333333333)), tl.log(1.0 + e))
    return tl.maximum(x, 0.0) + log1p


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    length, dim_per_group, n_dblocks, groups,
    stride_u_b, stride_u_d, stride_delta_b, stride_delta_d,
    stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n,
    stride_z_b, stride_z_d, stride_y_b, stride_y_d,
    STATE: tl.constexpr, STATE_P2: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    STAGES: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
):
    """One program: batch b, group g, channels g*dim_per_group + [dblock*BLOCK_D, +BLOCK_D), all L steps.

    Tensors of the tile are [state, channel, time]: with time held inside a thread, Triton's
    default layout puts the channels on the lanes first and the states after them, so each thread
    owns a few states of one channel and the sum over states needs few shuffles. The time axis must
    be contiguous (stride 1) in u, delta, z, B, C and y; A is (dim, STATE) contiguous fp32, D and
    delta_bias (dim,) fp32.
    """
    pid = tl.program_id(0)
    dblock = pid % n_dblocks
    bg = pid // n_dblocks
    g = bg % groups
    b = (bg // groups).to(tl.int64)            # batch offsets may pass 2**31 elements

    d_in_group = dblock * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d_in_group < dim_per_group
    d = g * dim_per_group + d_in_group
    n = tl.arange(0, STATE_P2)
    n_mask = n < STATE

    A = tl.load(A_ptr + n[:, None] + d[None, :] * STATE, mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    A = A * LOG2E                                # exp(delta * A) = exp2(delta * A * log2(e))
    if HAS_D:
        Dskip = tl.load(D_ptr + d, mask=d_mask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0)

    u_rows = u_ptr + b * stride_u_b + d[:, None] * stride_u_d
    delta_rows = delta_ptr + b * stride_delta_b + d[:, None] * stride_delta_d
    z_rows = z_ptr + b * stride_z_b + d[:, None] * stride_z_d
    y_rows = y_ptr + b * stride_y_b + d[:, None] * stride_y_d
    B_rows = B_ptr + b * stride_B_b + g * stride_B_g + n[:, None] * stride_B_n
    C_rows = C_ptr + b * stride_C_b + g * stride_C_g + n[:, None] * stride_C_n

    h = tl.zeros([STATE_P2, BLOCK_D], dtype=tl.float32)
    for t0 in tl.range(0, length, BLOCK_T, num_stages=STAGES):
        t = t0 + tl.arange(0, BLOCK_T)
        t_mask = t < length
        mask = d_mask[:, None] & t_mask[None, :]
        bc_mask = n_mask[:, None] & t_mask[None, :]
        u = tl.load(u_rows + t[None, :], mask=mask, other=0.0).to(tl.float32)
        delta = tl.load(delta_rows + t[None, :], mask=mask, other=0.0).to(tl.float32)
        Bt = tl.load(B_rows + t[None, :], mask=bc_mask, other=0.0).to(tl.float32)
        Ct = tl.load(C_rows + t[None, :], mask=bc_mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            delta = delta + bias[:, None]
        if SOFTPLUS:
            delta = _softplus(delta)
        extra = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
        if HAS_D:
            extra = u * Dskip[:, None]
        gate = tl.full([BLOCK_D, BLOCK_T], 1.0, dtype=tl.float32)
        if HAS_Z:
            z = tl.load(z_rows + t[None, :], mask=mask, other=0.0).to(tl.float32)
            gate = z * tl.sigmoid(z)

        dA = tl.exp2(delta[None, :, :] * A[:, :, None])                  # [N, BLOCK_D, BLOCK_T]
        dBu = (delta * u)[None, :, :] * Bt[:, None, :]
        if BLOCK_T == 4:
            h = _tile4(h, dA, dBu, Ct, extra, gate, y_rows + t[None, :], mask)
        else:
            h = _tile8(h, dA, dBu, Ct, extra, gate, y_rows + t[None, :], mask)


_INTERPRETED = not isinstance(_selective_scan_fwd_kernel, triton.runtime.JITFunction)


@dataclass(frozen=True)
class LaunchConfig:
    """A fixed launch configuration: channels per program, time tile, warps, pipeline stages."""

    block_d: int
    block_t: int
    num_warps: int
    stages: int


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def launch_config(state: int, length: int, dtype: torch.dtype, block_d: int | None = None,
                  block_t: int | None = None, num_warps: int = 1, stages: int | None = None) -> LaunchConfig:
    """The fixed configuration for a scan (no autotuning): arguments left as None take the defaults.

    - ``block_d``: channels per program. The tile is [state, channel, time] with time inside each
      thread, and Triton's default layout gives the lanes to the channels first, the rest to the
      states, so ``32 // block_d`` lanes share a channel's states: 8 channels for N = 16 (4 states
      per thread), i.e. ~4 states per thread whatever N.
    - ``block_t``: time steps per tile, 8 (4 for sequences of <= 4 steps).
    - ``num_warps``: 1, so programs are small and many (1536 for batch 32 x 384 channels).
    - ``stages``: time tiles in flight in the software pipeline: 5 for 4-byte inputs, 8 for 2-byte
      inputs, i.e. ~32 steps (~256 B of u and delta) ahead per channel, what an H100 needs in
      flight per channel to stream at full bandwidth when ~100 channels share an SM.
    """
    state_p2 = max(2, _next_pow2(state))
    if block_d is None:
        lanes_per_channel = min(32, max(1, state_p2 // 4))
        block_d = max(1, 32 * num_warps // lanes_per_channel)
    if block_t is None:
        block_t = 8
    block_t = max(4, min(block_t, _next_pow2(max(length, 1))))
    if block_t not in (4, 8):
        raise ValueError(f"time tile {block_t} is not 4 or 8")
    if stages is None:
        stages = 5 if torch.empty((), dtype=dtype).element_size() >= 4 else 8
    return LaunchConfig(block_d, block_t, num_warps, stages)


def _time_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def kernel_arguments(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                     out=None, config: LaunchConfig | None = None):
    """Everything one launch needs: (grid, positional arguments, constexpr/launch keywords, y).

    Split from the launch so that tests can compile exactly what a launch compiles (ahead of
    time, for an H100, on a machine without a GPU). Validates shapes; makes the time axis
    contiguous where it is not; allocates y unless ``out`` is given.
    """
    batch, dim, length = u.shape
    state = A.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    if dim % groups:
        raise ValueError(f"dim {dim} is not divisible by the {groups} groups of B/C")
    if A.shape[0] != dim or delta.shape != u.shape or (z is not None and z.shape != u.shape):
        raise ValueError(f"shapes do not match: u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}"
                         + (f", z {tuple(z.shape)}" if z is not None else ""))
    if B.shape[-2:] != (state, length) or C.shape != B.shape or B.shape[0] != batch:
        raise ValueError(f"B and C must be (batch, N, L) or (batch, G, N, L) = {batch}, {state}, {length}; "
                         f"got B {tuple(B.shape)}, C {tuple(C.shape)}")
    if out is None:
        out = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    elif out.shape != u.shape or out.dtype != u.dtype or out.stride(-1) != 1 or out.device != u.device:
        raise ValueError(f"out must be {tuple(u.shape)} {u.dtype} on {u.device} with a contiguous time axis; "
                         f"got {tuple(out.shape)} {out.dtype} on {out.device} with strides {out.stride()}")

    u, delta = _time_contiguous(u), _time_contiguous(delta)
    B4 = _time_contiguous(B.unsqueeze(1) if B.dim() == 3 else B)
    C4 = _time_contiguous(C.unsqueeze(1) if C.dim() == 3 else C)
    A32 = A.to(torch.float32).contiguous()
    D32 = D.to(torch.float32).contiguous() if D is not None else A32       # placeholder when absent
    bias32 = delta_bias.to(torch.float32).contiguous() if delta_bias is not None else A32
    zt = _time_contiguous(z) if z is not None else u

    cfg = config or launch_config(state, length, u.dtype)
    dim_per_group = dim // groups
    n_dblocks = triton.cdiv(dim_per_group, cfg.block_d)
    grid = (batch * groups * n_dblocks,)
    args = (u, delta, A32, B4, C4, D32, zt, bias32, out,
            length, dim_per_group, n_dblocks, groups,
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1),
            B4.stride(0), B4.stride(1), B4.stride(2), C4.stride(0), C4.stride(1), C4.stride(2),
            zt.stride(0), zt.stride(1), out.stride(0), out.stride(1))
    meta = dict(STATE=state, STATE_P2=max(2, _next_pow2(state)), BLOCK_D=cfg.block_d, BLOCK_T=cfg.block_t,
                STAGES=cfg.stages, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), num_warps=cfg.num_warps)
    return grid, args, meta, out


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          out=None, config: LaunchConfig | None = None):
    """Run the Triton kernel: same arguments and result as ``scan.selective_scan_ref``.

    Tensors must be on a CUDA device (the launch goes to torch's current stream), or on the CPU
    when this module was imported with TRITON_INTERPRET=1 (Triton's interpreter). ``out``
    (batch, dim, L) in u's dtype with a contiguous time axis receives y when given (no allocation:
    usable inside a TensorRT plugin or a CUDA graph). Returns y. Forward only: no autograd.
    """
    if u.device.type != "cuda" and not _INTERPRETED:
        raise RuntimeError("the Triton selective-scan kernel needs CUDA tensors (or TRITON_INTERPRET=1 "
                           f"set before importing it, to run through Triton's interpreter); got {u.device}")
    grid, args, meta, out = kernel_arguments(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out, config)
    if grid[0] == 0 or u.shape[2] == 0:
        return out
    _selective_scan_fwd_kernel[grid](*args, **meta)
    return out
