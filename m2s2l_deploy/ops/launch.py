"""The one launch function of the selective-scan kernel, shared by PyTorch and the TensorRT plugin.

``selective_scan_launch`` is a plain function of torch tensors with mamba-ssm's semantics
(``scan.selective_scan_ref``): the TensorRT plugin's ``enqueue`` wraps its device buffers as
tensors and calls exactly this, so the kernel a plan runs is the kernel the tests check.

- CUDA tensors: the OpenAI-Triton kernel (``scan_triton``), launched on torch's *current* CUDA
  stream. A caller holding a foreign stream (TensorRT's ``enqueue``) wraps the call in
  ``with torch.cuda.stream(torch.cuda.ExternalStream(stream_ptr)):``.
- CPU tensors with ``TRITON_INTERPRET=1`` set before the kernel module is first imported: the same
  Triton kernel and launch grid through Triton's interpreter (how CI tests the GPU path).
- Other CPU tensors: the fused PyTorch CPU form (``scan.selective_scan_cpu``).
"""

from __future__ import annotations

import os

import torch

from ..errors import UserError
from .scan import selective_scan_cpu


def interpreter_requested() -> bool:
    """TRITON_INTERPRET=1 in the environment: what Triton reads when it decorates a kernel."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_kernel_module():
    """The kernel module, imported on first use; a one-line UserError when Triton is missing."""
    try:
        from .kernels import scan_triton
    except ImportError as exc:
        raise UserError("the GPU selective-scan kernel needs OpenAI Triton "
                        f"(pip install 'm2s2l-deploy[triton]'): {exc}") from None
    return scan_triton


def selective_scan_launch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, out=None):
    """y = selective scan of (u, delta, A, B, C, D, z, delta_bias, delta_softplus); returns y.

    Shapes: u, delta, z (batch, dim, L); A (dim, N); B, C (batch, N, L) or (batch, G, N, L);
    D, delta_bias (dim,). ``out`` (batch, dim, L) in u's dtype with a contiguous time axis receives
    y when given (nothing is allocated for y then) and is returned.
    """
    use_triton = u.is_cuda
    if not use_triton and interpreter_requested():
        kernel = triton_kernel_module()
        if not kernel.interpreted():
            raise RuntimeError("TRITON_INTERPRET=1 was set after m2s2l_deploy.ops.kernels.scan_triton was imported: "
                               "set it before the first import to run the kernel through Triton's interpreter")
        use_triton = True
    if use_triton:
        return triton_kernel_module().selective_scan_triton(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, out=out)
    y = selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if out is None:
        return y
    if out.shape != y.shape or out.dtype != y.dtype:
        raise ValueError(f"out must be {tuple(y.shape)} {y.dtype}; got {tuple(out.shape)} {out.dtype}")
    with torch.no_grad():
        out.copy_(y)
    return out
