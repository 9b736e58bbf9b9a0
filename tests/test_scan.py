"""The sequential reference and the parallel scan agree (values and gradients)."""

import pytest
import torch

from m2s2l_deploy.ops.scan import (associative_scan_linear, scan_steps, selective_scan_cpu, selective_scan_fn,
                               selective_scan_numba, selective_scan_parallel, selective_scan_ref)

FAST_FORMS = [selective_scan_parallel, selective_scan_cpu, selective_scan_numba]


def _inputs(batch, dim, state, length, groups=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    bc_shape = (batch, state, length) if groups is None else (batch, groups, state, length)
    return dict(
        u=r(batch, dim, length).to(dtype),
        delta=(0.5 * r(batch, dim, length)).to(dtype),
        A=-torch.exp(r(dim, state)),
        B=r(*bc_shape).to(dtype),
        C=r(*bc_shape).to(dtype),
        D=r(dim),
        z=r(batch, dim, length).to(dtype),
        delta_bias=0.1 * r(dim),
    )


@pytest.mark.parametrize("form", FAST_FORMS)
@pytest.mark.parametrize("length", [1, 2, 7, 64, 100, 257])
@pytest.mark.parametrize("groups", [None, 2])
def test_fast_forms_match_reference(form, length, groups):
    x = _inputs(2, 6, 4, length, groups=groups)
    ref = selective_scan_ref(**x, delta_softplus=True)
    par = form(**x, delta_softplus=True)
    assert par.shape == ref.shape == (2, 6, length)
    torch.testing.assert_close(par, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", FAST_FORMS)
def test_optional_arguments_and_last_state(form):
    x = _inputs(1, 3, 8, 33)
    for kwargs in ({}, {"D": x["D"]}, {"z": x["z"]}, {"delta_bias": x["delta_bias"]}):
        # without softplus, delta must be positive for a decaying (stable) recurrence
        args = dict(u=x["u"], delta=x["delta"].abs(), A=x["A"], B=x["B"], C=x["C"], **kwargs)
        ref, h_ref = selective_scan_ref(**args, return_last_state=True)
        par, h_par = form(**args, return_last_state=True)
        torch.testing.assert_close(par, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h_par, h_ref, rtol=1e-5, atol=1e-5)


def test_gradients_match():
    x = _inputs(2, 4, 4, 45, groups=2, seed=3)
    leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    grads = []
    for fn in (selective_scan_ref, *FAST_FORMS):
        for v in leaves.values():
            v.grad = None
        out = fn(**leaves, delta_softplus=True)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append({k: v.grad.clone() for k, v in leaves.items()})
    for fast in grads[1:]:
        for k in leaves:
            torch.testing.assert_close(fast[k], grads[0][k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize("form", FAST_FORMS)
def test_half_inputs_compute_in_fp32(form):
    x = _inputs(1, 4, 4, 20, dtype=torch.bfloat16)
    out = form(**x)
    assert out.dtype == torch.bfloat16
    ref = selective_scan_ref(**x)
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)


def test_associative_scan_against_loop_and_no_overflow():
    a = torch.rand(3, 50) * 0.999
    a[:, 10] = 0.0
    b = torch.randn(3, 50) * 1e3
    h, expect = torch.zeros(3), []
    for t in range(50):
        h = a[:, t] * h + b[:, t]
        expect.append(h)
    torch.testing.assert_close(associative_scan_linear(a, b), torch.stack(expect, -1), rtol=1e-5, atol=1e-3)
    # extremely strong decay: exp(-1e4) underflows to 0 and must stay finite
    out = selective_scan_parallel(torch.ones(1, 1, 9), torch.full((1, 1, 9), 1e4),
                                  -torch.ones(1, 2), torch.ones(1, 2, 9), torch.ones(1, 2, 9))
    assert torch.isfinite(out).all()


def test_step_count_is_logarithmic():
    assert scan_steps(1) == 0 and scan_steps(2) == 1 and scan_steps(4096) == 12 and scan_steps(257) == 9


def test_dispatcher_on_cpu_is_cpu_form():
    x = _inputs(1, 2, 2, 5)
    torch.testing.assert_close(selective_scan_fn(**x), selective_scan_cpu(**x))


def test_cpu_takes_the_numba_form_for_training_and_inference():
    """The rule, and the dispatcher really running it: with a gradient the Numba autograd kernel runs,
    without one the forward-only kernel (the one ONNX Runtime's plugin op runs); both agree with the
    PyTorch CPU form, which computes through another code path."""
    from m2s2l_deploy.ops import scan
    from m2s2l_deploy.ops.kernels import scan_numba, scan_numba_forward

    rule = scan.choose_scan_form
    assert rule(on_cuda=False, needs_grad=True, have_mamba_ssm=False, have_triton=False, have_numba=True) == "numba"
    assert rule(on_cuda=False, needs_grad=False, have_mamba_ssm=False, have_triton=False, have_numba=True) == "numba"
    assert rule(on_cuda=False, needs_grad=True, have_mamba_ssm=False, have_triton=False, have_numba=False) == "cpu"
    assert rule(on_cuda=True, needs_grad=True, have_mamba_ssm=False, have_triton=True, have_numba=True) == "parallel"
    assert scan.scan_form_for(on_cuda=False, needs_grad=True) == "numba"
    assert scan.scan_form_for(on_cuda=False, needs_grad=False) == "numba"
    x = {k: v.requires_grad_(True) for k, v in _inputs(2, 4, 4, 30, groups=2).items()}
    calls, forward_calls = [], []
    original, original_forward = scan_numba.NumbaRecurrence.forward, scan_numba_forward.selective_scan_forward

    def counting(ctx, *args):
        calls.append(args[0].shape)
        return original(ctx, *args)

    def counting_forward(*args, **kwargs):
        forward_calls.append(args[0].shape)
        return original_forward(*args, **kwargs)

    scan_numba.NumbaRecurrence.forward = staticmethod(counting)
    scan_numba_forward.selective_scan_forward = counting_forward
    scan._numba_forward.cache_clear()
    try:
        out = selective_scan_fn(**x, delta_softplus=True)
        with torch.no_grad():
            out_inference = selective_scan_fn(**x, delta_softplus=True)
    finally:
        scan_numba.NumbaRecurrence.forward = staticmethod(original)
        scan_numba_forward.selective_scan_forward = original_forward
        scan._numba_forward.cache_clear()
    assert calls == [torch.Size([2, 4, 30])]            # the training call
    assert forward_calls == [(2, 4, 30)]                # the inference call
    with torch.no_grad():
        expected = selective_scan_cpu(**x, delta_softplus=True)
    torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_inference, expected, rtol=1e-5, atol=1e-5)


def test_numba_form_refuses_uneven_groups():
    x = _inputs(1, 6, 4, 5, groups=4)
    with pytest.raises(ValueError, match="not divisible"):
        selective_scan_numba(**x)
