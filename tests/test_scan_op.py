"""The compiled forward scan (NumPy + Numba) against the reference, and ONNX Runtime running it as the
plugin node's op."""

import threading

import numpy as np
import pytest
import torch

from m2s2l_deploy.ops.kernels import scan_numba_forward
from m2s2l_deploy.ops.kernels.scan_numba_forward import selective_scan_forward
from m2s2l_deploy.ops.scan import selective_scan_ref

LENGTHS = [1, 2, 3, 5, 7, 8, 13, 16, 31, 33, 64, 100, 128, 255, 256, 257]


def _inputs(batch, dim, state, length, groups, seed=0):
    r = np.random.default_rng(seed)
    f = np.float32
    bc = (batch, state, length) if groups is None else (batch, groups, state, length)
    return dict(u=r.standard_normal((batch, dim, length)).astype(f),
                delta=(0.5 * r.standard_normal((batch, dim, length))).astype(f),
                A=-np.exp(r.standard_normal((dim, state))).astype(f),
                B=r.standard_normal(bc).astype(f), C=r.standard_normal(bc).astype(f),
                D=r.standard_normal(dim).astype(f), delta_bias=(0.1 * r.standard_normal(dim)).astype(f))


def _reference(x, **options):
    t = {k: None if v is None else torch.from_numpy(v) for k, v in x.items()}
    return selective_scan_ref(**t, **options).numpy()


@pytest.mark.parametrize("length", LENGTHS)
def test_forward_kernel_matches_reference_on_every_length(length):
    x = _inputs(2, 6, 4, length, groups=2, seed=length)
    y = selective_scan_forward(**x, delta_softplus=True)
    assert y.shape == (2, 6, length) and y.dtype == np.float32
    np.testing.assert_allclose(y, _reference(x, delta_softplus=True), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("groups", [None, 1, 3])
@pytest.mark.parametrize("with_d", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward_kernel_options(softplus, groups, with_d, with_bias):
    x = _inputs(3, 6, 8, 41, groups=groups, seed=7)
    if not softplus:
        x["delta"] = np.abs(x["delta"])               # a positive step keeps the recurrence decaying
    x["D"] = x["D"] if with_d else None
    x["delta_bias"] = x["delta_bias"] if with_bias else None
    y = selective_scan_forward(**x, delta_softplus=softplus)
    np.testing.assert_allclose(y, _reference(x, delta_softplus=softplus), rtol=1e-5, atol=2e-5)


def test_forward_kernel_large_steps_and_softplus_threshold():
    """Steps far into softplus' linear part (> 20) and decays that underflow: finite, as the reference."""
    x = _inputs(1, 4, 4, 50, groups=1, seed=3)
    x["delta"] = (x["delta"] * 40).astype(np.float32)
    y = selective_scan_forward(**x, delta_softplus=True)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, _reference(x, delta_softplus=True), rtol=1e-5, atol=2e-5)


def test_forward_kernel_refuses_uneven_groups():
    with pytest.raises(ValueError, match="not divisible"):
        selective_scan_forward(**_inputs(1, 6, 4, 5, groups=4))


def test_forward_kernel_from_many_threads():
    """Servers call from several threads: launches are serialised, every result is right."""
    cases = [_inputs(2, 8, 4, 60 + i, groups=2, seed=i) for i in range(6)]
    expected = [_reference(x, delta_softplus=True) for x in cases]
    results = [None] * len(cases)

    def work(i):
        for _ in range(3):
            results[i] = selective_scan_forward(**cases[i], threads=1 + i % 2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def test_thread_setting_is_capped_and_checked():
    import numba
    pool = numba.config.NUMBA_NUM_THREADS
    assert scan_numba_forward.launch_threads(pool + 5) == pool
    assert scan_numba_forward.launch_threads(1) == 1
    assert scan_numba_forward.launch_threads(None) == pool
    with pytest.raises(ValueError, match=">= 1"):
        scan_numba_forward.launch_threads(0)


def test_kernel_compiles_without_a_cache_location(monkeypatch):
    """A read-only install with no writable cache: Numba refuses ``cache=True`` when the kernel is made
    (no cache locator applies); the kernel is then compiled in memory and still gives the right answer."""
    import numba

    real_njit = numba.njit
    made = []

    def njit(*args, **kwargs):
        made.append(kwargs.get("cache"))
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function '_scan_rows': no locator available for file")
        return real_njit(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", njit)
    scan_numba_forward._kernel.cache_clear()
    try:
        x = _inputs(1, 4, 4, 9, groups=1, seed=5)
        y = selective_scan_forward(**x)
    finally:
        scan_numba_forward._kernel.cache_clear()        # later tests get the cached kernel again
    assert made == [True, False]
    np.testing.assert_allclose(y, _reference(x, delta_softplus=True), rtol=1e-5, atol=2e-5)


def test_plugin_op_runs_the_numba_kernel_in_onnxruntime():
    """ORT runs the plugin node through the registered op (counted), kernel numba, same numbers as the
    node's ONNX function body and the reference."""
    pytest.importorskip("onnxruntime_extensions")
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    from m2s2l_deploy.export import scan_graph
    from m2s2l_deploy.runners import scan_op

    x = _inputs(2, 8, 4, 37, groups=4, seed=11)
    model = scan_graph.standalone_model("plugin", 8, 4, 37, groups=4).SerializeToString()
    plain = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, x)[0]
    op = scan_op.register()
    assert op.kernel == "numba" and scan_op.available_kernel() == "numba"
    so = ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    before = op.calls
    session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    y = session.run(None, x)[0]
    assert op.calls == before + 1
    # the calling runner's thread count reaches the kernel (Numba's setting is per thread: read it back)
    import numba
    with scan_op.calls_use_threads(1):
        session.run(None, x)
    assert numba.get_num_threads() == 1
    session.run(None, x)
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    np.testing.assert_allclose(y, plain, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(y, _reference(x, delta_softplus=True), rtol=1e-5, atol=2e-5)
    assert scan_op.register() is op                     # once per process
    assert scan_op.first_call_s() is not None and scan_op.first_call_s() > 0


def test_a_launch_leaves_torch_thread_count_alone():
    """Numba's OpenMP layer resets the launching thread's OpenMP count after a launch with fewer threads
    than its pool; torch reads that count, so a 1-thread PyTorch run would silently go multi-threaded."""
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        selective_scan_forward(**_inputs(2, 4, 4, 9, groups=1), threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)


def test_op_kernel_choice_and_its_torch_fallback(monkeypatch):
    """Numba first; PyTorch's CPU scan when Numba is missing (same numbers); neither: no op, and asking
    for one is a one-line error."""
    pytest.importorskip("onnxruntime_extensions")
    from m2s2l_deploy.errors import UserError
    from m2s2l_deploy.runners import scan_op

    real = scan_op._importable
    assert scan_op.available_kernel() == "numba"
    monkeypatch.setattr(scan_op, "_importable", lambda name: name != "numba" and real(name))
    assert scan_op.available_kernel() == "torch"
    x = _inputs(2, 8, 4, 21, groups=2, seed=9)
    y = scan_op._torch_scan()(*(x[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")), True)
    np.testing.assert_allclose(y, _reference(x, delta_softplus=True), rtol=1e-5, atol=2e-5)
    monkeypatch.setattr(scan_op, "_importable", lambda name: name not in ("numba", "torch") and real(name))
    assert scan_op.available_kernel() is None
    monkeypatch.setattr(scan_op, "_OP", None)
    with pytest.raises(UserError, match="needs Numba or torch"):
        scan_op.register()
