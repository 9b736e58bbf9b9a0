"""The SelectiveScan TensorRT plugin and the backend loader, without a GPU.

Covered here: the classes derive from TensorRT's IPluginV3 interfaces, registration, the
build-time methods, the fields round trip (get_fields_to_serialize -> create_plugin), the mapping
of the node's inputs onto ``selective_scan_launch``, and ``enqueue`` itself run on host memory
(pointers of CPU tensors) against the sequential reference scan. The plugin inside a real
TensorRT-RTX build is tested in test_engine_build.py. Also: the libtensorrt_rtx.so link fix and
the "backend not installed" switch.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

trt = pytest.importorskip("tensorrt_rtx_bindings")

from m2s2l_deploy.engine import backend as backend_mod  # noqa: E402
from m2s2l_deploy.engine import plugin as plug  # noqa: E402
from m2s2l_deploy.errors import UserError  # noqa: E402
from m2s2l_deploy.export.scan_graph import INPUTS, PLUGIN_NAMESPACE, PLUGIN_VERSION  # noqa: E402
from m2s2l_deploy.ops.scan import selective_scan_ref  # noqa: E402


def _scan_inputs(b=2, d=8, n=4, g=2, L=11, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return {"u": r(b, d, L), "delta": r(b, d, L) * 0.5, "A": -torch.rand(d, n, generator=gen) - 0.1,
            "B": r(b, g, n, L), "C": r(b, g, n, L), "D": r(d), "delta_bias": r(d) * 0.1}


def _fc(**values):
    return trt.PluginFieldCollection([trt.PluginField(k, np.array([v], np.int32), trt.PluginFieldType.INT32)
                                      for k, v in values.items()])


def _desc(t: torch.Tensor):
    d = trt.PluginTensorDesc()
    d.dims = trt.Dims(list(t.shape))
    d.type = {torch.float32: trt.DataType.FLOAT, torch.float16: trt.DataType.HALF}[t.dtype]
    d.format = trt.TensorFormat.LINEAR
    return d


def _dyn(dtype, fmt=trt.TensorFormat.LINEAR):
    d = trt.DynamicPluginTensorDesc()
    desc = trt.PluginTensorDesc()
    desc.type, desc.format = dtype, fmt
    d.desc = desc
    return d


@pytest.fixture(scope="module")
def creator():
    return plug.register_plugin(trt)


def test_classes_derive_from_the_v3_interfaces():
    plugin_cls, creator_cls = plug.plugin_classes(trt)
    for base in (trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        assert issubclass(plugin_cls, base)
    assert issubclass(creator_cls, trt.IPluginCreatorV3One)
    assert plug.plugin_classes(trt) == (plugin_cls, creator_cls)      # one class pair per module


def test_registration_is_visible_in_the_registry_and_idempotent(creator):
    found = trt.get_plugin_registry().get_creator("SelectiveScan", PLUGIN_VERSION, PLUGIN_NAMESPACE)
    assert found is not None
    assert plug.register_plugin(trt) is creator
    assert [f.name for f in creator.field_names] == ["delta_softplus"]


@pytest.mark.parametrize("softplus", [0, 1])
def test_fields_round_trip_through_serialize_and_create(creator, softplus):
    built = creator.create_plugin("scan_a", _fc(delta_softplus=softplus), trt.TensorRTPhase.BUILD)
    assert built.delta_softplus is bool(softplus)
    stored = built.get_fields_to_serialize()
    assert plug.fields_to_dict(stored) == {"delta_softplus": softplus}
    loaded = creator.create_plugin("scan_a", stored, trt.TensorRTPhase.RUNTIME)
    assert loaded.delta_softplus is bool(softplus)
    assert (loaded.plugin_name, loaded.plugin_namespace, loaded.plugin_version) == \
        ("SelectiveScan", PLUGIN_NAMESPACE, PLUGIN_VERSION)
    assert loaded.clone().delta_softplus is bool(softplus)
    assert loaded.get_capability_interface(trt.PluginCapabilityType.CORE) is loaded


def test_build_time_methods(creator):
    p = creator.create_plugin("scan_b", _fc(delta_softplus=1), trt.TensorRTPhase.BUILD)
    assert p.get_output_data_types([trt.DataType.FLOAT] * 7) == [trt.DataType.FLOAT]
    assert p.num_outputs == 1 and p.get_workspace_size([], []) == 0
    fp32 = [_dyn(trt.DataType.FLOAT) for _ in range(8)]
    assert all(p.supports_format_combination(i, fp32, 7) for i in range(8))
    half = [_dyn(trt.DataType.HALF) for _ in range(8)]
    assert not p.supports_format_combination(0, half, 7)               # the scan stays FP32
    strided = [_dyn(trt.DataType.FLOAT, trt.TensorFormat.CHW4) for _ in range(8)]
    assert not p.supports_format_combination(0, strided, 7)
    with pytest.raises(ValueError):
        p.configure_plugin(fp32[:3], fp32[7:])


def test_tensor_at_views_host_memory_without_copying():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    view = plug.tensor_at(x.data_ptr(), (3, 4), "float32", device="cpu")
    assert torch.equal(view, x)
    view[1, 2] = -5.0
    assert x[1, 2] == -5.0
    assert plug.tensor_at(0, (0, 4), "float32", device="cpu").shape == (0, 4)


def test_run_scan_maps_node_inputs_onto_the_launch_signature(monkeypatch):
    calls = []

    def fake_launch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, out=None):
        calls.append(dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                          delta_softplus=delta_softplus, out=out))
        return out

    monkeypatch.setattr(plug, "_launch", lambda: fake_launch)
    x = _scan_inputs()
    y = torch.empty_like(x["u"])
    plug.run_scan(x, y, True)
    (c,) = calls
    for name in INPUTS:
        assert c[name] is x[name]
    assert c["z"] is None and c["delta_softplus"] is True and c["out"] is y


def enqueue_on_host(softplus: int = 1) -> float:
    """Run the plugin's enqueue on CPU pointers; returns max |y - selective_scan_ref|."""
    creator = plug.register_plugin(trt)
    x = _scan_inputs()
    plugin = creator.create_plugin("scan_c", _fc(delta_softplus=softplus), trt.TensorRTPhase.RUNTIME)
    plugin.device = "cpu"
    y = torch.full_like(x["u"], float("nan"))
    tensors = [x[name].contiguous() for name in INPUTS]
    rc = plugin.enqueue([_desc(t) for t in tensors], [_desc(y)], [t.data_ptr() for t in tensors],
                        [y.data_ptr()], 0, 0)
    assert rc == 0
    ref = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], delta_bias=x["delta_bias"],
                             delta_softplus=bool(softplus))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    return float((y - ref).abs().max())


def _needs_launch():
    try:
        importlib.import_module("m2s2l_deploy.ops.launch")
    except ImportError as e:
        pytest.skip(f"m2s2l_deploy.ops.launch is not importable here ({e})")


@pytest.mark.parametrize("softplus", [0, 1])
def test_enqueue_on_host_memory_matches_the_reference_scan(softplus):
    """enqueue end to end with CPU pointers: descs -> tensor views -> launch (torch CPU form) -> y."""
    _needs_launch()
    enqueue_on_host(softplus)


def test_enqueue_runs_the_triton_kernel_through_the_interpreter():
    """Same, with TRITON_INTERPRET=1: enqueue launches the OpenAI-Triton kernel (interpreted on CPU)."""
    _needs_launch()
    pytest.importorskip("triton")
    code = ("import sys; sys.path.insert(0, 'tests'); import test_engine_plugin as t; "
            "from m2s2l_deploy.ops import launch; from m2s2l_deploy.ops.kernels import scan_triton; "
            "assert launch.interpreter_requested() and scan_triton.interpreted(); "
            "print('err', t.enqueue_on_host(1))")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "err" in proc.stdout


# -- backend --------------------------------------------------------------------------------------
def test_rtx_library_link_is_created_once(tmp_path):
    (tmp_path / "libtensorrt_rtx.so.1").write_bytes(b"\x7fELF")
    link = backend_mod.ensure_rtx_library_link(tmp_path)
    assert link == tmp_path / "libtensorrt_rtx.so" and link.is_symlink()
    assert os.readlink(link) == "libtensorrt_rtx.so.1"
    assert backend_mod.ensure_rtx_library_link(tmp_path) == link        # idempotent
    link.unlink()
    link.symlink_to(tmp_path / "gone.so.1")                            # dangling: replaced
    assert backend_mod.ensure_rtx_library_link(tmp_path).resolve() == (tmp_path / "libtensorrt_rtx.so.1").resolve()


def test_rtx_library_link_in_a_read_only_folder_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "libtensorrt_rtx.so.1").write_bytes(b"\x7fELF")

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(backend_mod.os, "symlink", refuse)
    with pytest.raises(UserError) as e:
        backend_mod.ensure_rtx_library_link(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "not writable" in msg and "ln -s libtensorrt_rtx.so.1" in msg


def test_installed_rtx_has_the_link_after_loading():
    be = backend_mod.load_backend("tensorrt-rtx")
    assert be.is_rtx and be.version == trt.__version__
    assert (backend_mod.rtx_libs_dir() / "libtensorrt_rtx.so").exists()


def test_hidden_backends_count_as_not_installed(monkeypatch):
    monkeypatch.setenv(backend_mod.HIDE_ENV, "all")
    assert backend_mod.available_backends() == []
    with pytest.raises(UserError, match=r"no TensorRT backend is installed \(pip install 'm2s2l-deploy\[tensorrt\]'"):
        backend_mod.load_backend()
    monkeypatch.setenv(backend_mod.HIDE_ENV, "tensorrt-rtx")
    with pytest.raises(UserError, match="'tensorrt-rtx' is not installed"):
        backend_mod.load_backend("rtx")
    with pytest.raises(UserError, match="unknown TensorRT backend"):
        backend_mod.load_backend("onnxruntime")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none in CI)")
def test_enqueue_body_on_a_gpu_matches_the_reference():
    """What enqueue does with TensorRT's device pointers, on real CUDA memory and a foreign stream:
    __cuda_array_interface__ views, ExternalStream, the launch function (Triton kernel on CUDA)."""
    _needs_launch()
    x = {k: v.cuda() for k, v in _scan_inputs(b=3, d=16, n=8, g=2, L=37).items()}
    y = torch.full_like(x["u"], float("nan"))
    views = {k: plug.tensor_at(v.data_ptr(), v.shape, "float32", "cuda") for k, v in x.items()}
    y_view = plug.tensor_at(y.data_ptr(), y.shape, "float32", "cuda")
    stream = torch.cuda.Stream()
    with plug._on_stream(stream.cuda_stream, "cuda"):
        plug.run_scan(views, y_view, True)
    stream.synchronize()
    ref = selective_scan_ref(*(x[k].cpu() for k in ("u", "delta", "A", "B", "C")), D=x["D"].cpu(),
                             delta_bias=x["delta_bias"].cpu(), delta_softplus=True)
    torch.testing.assert_close(y.cpu(), ref, rtol=1e-4, atol=1e-4)
