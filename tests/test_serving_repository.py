"""Triton model repositories (`package`): configs checked with Triton's own schema, dims
from the ONNX (cross-checked by running it), platforms, refusals, the Python-backend model's batching.

No server here (see test_serving.py). The tensorrt_plan case packages a stand-in plan file with a
sidecar the test writes: it checks what `package` decides from a sidecar, not that a plan runs.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tritonclient.grpc")
import torch  # noqa: E402
from google.protobuf import json_format, text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from m2s2l_deploy.contract import InputContract  # noqa: E402
from m2s2l_deploy.errors import UserError  # noqa: E402
from m2s2l_deploy.model import M2S2L, preset_config  # noqa: E402
from m2s2l_deploy.model.checkpoint import save_checkpoint  # noqa: E402
from m2s2l_deploy.export.exporter import export_onnx  # noqa: E402
from m2s2l_deploy.runners.onnx_runner import OnnxRunner  # noqa: E402
from m2s2l_deploy.serving.repository import package_repository, read_config  # noqa: E402
from cli_helpers import assert_user_error, run_cli  # noqa: E402

from m2s2l_deploy.model.config import preset_config as _preset  # noqa: E402

H, W = _preset("tiny").height, _preset("tiny").width  # the tiny preset's input size
T = _preset("tiny").clip_len  # frames per clip of the tiny preset


def tiny_run(root: Path, threshold: float = 2.5) -> Path:
    """A random-weights tiny checkpoint with a calibrated-looking threshold."""
    torch.manual_seed(0)
    cfg = preset_config("tiny", in_channels=1)
    run = root / "run"
    save_checkpoint(run, M2S2L(cfg), InputContract(cfg.height, cfg.width, 1, "stretch", 10.0, cfg.clip_len),
                    {"calibration": {"threshold": threshold}})
    return run


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("serving-exports")
    run = tiny_run(root)
    out = {"run": run}
    for key, kw in {"loop": dict(scan="loop"), "chunked": dict(scan="chunked"), "plugin": dict(scan="plugin"),
                    "fixed": dict(scan="loop", batch=2), "split": dict(scan="loop", split=True)}.items():
        paths = export_onnx(run, root / f"tiny-{key}.onnx", **kw).paths
        out[key] = paths[0]
    out["qdq"] = _with_qdq(out["loop"], root / "tiny-qdq.onnx")
    return out


def _with_qdq(src: Path, dst: Path) -> Path:
    """A Q/DQ ONNX: the input passes through QuantizeLinear/DequantizeLinear before the graph."""
    from onnx import TensorProto, helper

    m = onnx.load(str(src))
    g = m.graph
    g.initializer.extend([helper.make_tensor("qdq_scale", TensorProto.FLOAT, [], [1 / 127]),
                          helper.make_tensor("qdq_zero", TensorProto.INT8, [], [0])])
    for node in g.node:
        node.input[:] = ["clip_dq" if i == "clip" else i for i in node.input]
    g.node.insert(0, helper.make_node("DequantizeLinear", ["clip_q", "qdq_scale", "qdq_zero"], ["clip_dq"]))
    g.node.insert(0, helper.make_node("QuantizeLinear", ["clip", "qdq_scale", "qdq_zero"], ["clip_q"]))
    onnx.save(m, str(dst))
    return dst


def parse(path: Path):
    """The test's own parse with Triton's schema (independent of the package's read_config)."""
    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())


def onnx_output_dims(path: Path) -> dict[str, tuple]:
    """Per-sample output shapes measured by running the ONNX on a batch of 2 (independent of the config writer)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = [2] + [d for d in sess.get_inputs()[0].shape[1:]]
    outs = sess.run(None, {"clip": np.zeros(shape, np.float32)})
    return {o.name: v.shape[1:] for o, v in zip(sess.get_outputs(), outs)}


def no_leftovers(repo: Path, name: str = "m2s2l") -> bool:
    return not (repo / name).exists() and not list(repo.glob(f".{name}.*")) if repo.exists() else True


# -- python platform ----------------------------------------------------------------------------------
def test_python_repository_config_matches_onnx(exports, tmp_path):
    repo = tmp_path / "repo"
    res = package_repository(repo, "python", onnx=exports["loop"], max_batch=6, instances=2, threads=1, device="cpu")
    cfg = parse(repo / "m2s2l" / "config.pbtxt")
    assert cfg == read_config(repo / "m2s2l" / "config.pbtxt")
    assert cfg.name == "m2s2l" and cfg.backend == "python" and cfg.max_batch_size == 6
    assert cfg.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    sess = ort.InferenceSession(str(exports["loop"]), providers=["CPUExecutionProvider"])
    assert [(i.name, list(i.dims)) for i in cfg.input] == [(i.name, list(i.shape[1:])) for i in sess.get_inputs()]
    measured = onnx_output_dims(exports["loop"])
    for o in cfg.output:
        want = measured[o.name]
        if want == ():   # per-clip scalar: dims [1] reshaped to []
            assert list(o.dims) == [1] and o.HasField("reshape") and list(o.reshape.shape) == []
        else:
            assert tuple(o.dims) == want, o.name
        assert o.data_type == model_config_pb2.TYPE_FP32
    meta = {p.key: p.value for p in onnx.load(str(exports["loop"]), load_external_data=False).metadata_props}
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert json.loads(params["m2s2l_contract"]) == json.loads(meta["contract"])
    assert float(params["m2s2l_threshold"]) == 2.5 and params["intra_op_threads"] == "1"
    version = repo / "m2s2l" / "1"
    assert (version / "model.onnx").read_bytes() == exports["loop"].read_bytes()
    assert (version / "model.py").is_file() and (repo / "m2s2l" / "requirements.txt").is_file()
    assert set(res.files) >= {"config.pbtxt", "1/model.onnx", "1/model.py", "1/m2s2l_runtime/runners/onnx_runner.py"}


@pytest.mark.parametrize("form", ["loop", "plugin"])
def test_vendored_runtime_is_self_contained(form, exports, tmp_path):
    """The repository's runner runs without m2s2l_deploy (nor torch) and gives the package runner's numbers;
    a plugin export runs its scans with the vendored Numba op."""
    repo = tmp_path / "repo"
    res = package_repository(repo, "python", onnx=exports[form])
    requirements = (repo / "m2s2l" / "requirements.txt").read_text().split()
    assert ("numba" in requirements and "onnxruntime-extensions" in requirements) == (form == "plugin")
    assert "1/m2s2l_runtime/ops/kernels/scan_numba_forward.py" in res.files
    clips = np.random.default_rng(0).uniform(-1, 1, (3, T, 1, H, W)).astype(np.float32)
    np.save(tmp_path / "clips.npy", clips)
    code = ("import sys, json, numpy as np; sys.modules['torch'] = None; sys.path.insert(0, sys.argv[1]);"
            "from m2s2l_runtime.runners.onnx_runner import OnnxRunner;"
            "r = OnnxRunner(sys.argv[1] + '/model.onnx', providers=['CPUExecutionProvider'], threads=1);"
            "s = r.infer(np.load(sys.argv[2]))['frame_score'];"
            "print(json.dumps({'scores': s.tolist(), 'runner': r.name,"
            " 'leak': sorted(m for m in sys.modules if m.startswith('m2s2l_deploy'))}))")
    proc = subprocess.run([sys.executable, "-c", code, str(repo / "m2s2l" / "1"), str(tmp_path / "clips.npy")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["leak"] == []
    assert got["runner"] == ("onnxruntime-plugin+numba" if form == "plugin" else "onnxruntime-loop")
    ref = OnnxRunner(exports["loop"], providers=["CPUExecutionProvider"], threads=1).infer(clips)["frame_score"]
    np.testing.assert_allclose(got["scores"], ref, rtol=1e-5, atol=1e-5)


def _fake_pb_utils():
    """The few triton_python_backend_utils names model.py uses, as plain Python."""
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class TritonError:
        def __init__(self, msg):
            self.msg = msg

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    class Request:
        def __init__(self, clip, wanted=()):
            self.clip, self.wanted = clip, list(wanted)

        def requested_output_names(self):
            return self.wanted

    pb.Tensor, pb.TritonError, pb.InferenceResponse, pb.Request = Tensor, TritonError, InferenceResponse, Request
    pb.get_input_tensor_by_name = lambda r, name: Tensor(name, r.clip) if name == "clip" and r.clip is not None else None
    return pb


def test_python_model_batches_requests_and_isolates_bad_ones(exports, tmp_path, monkeypatch):
    """execute() runs several requests as one batch, splits outputs back, errors only the bad request."""
    import importlib.util

    repo = tmp_path / "repo"
    package_repository(repo, "python", onnx=exports["loop"])
    pb = _fake_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    version = repo / "m2s2l" / "1"
    spec = importlib.util.spec_from_file_location("m2s2l_triton_model_under_test", version / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg_json = json.loads(json_format.MessageToJson(parse(repo / "m2s2l" / "config.pbtxt"),
                                                    preserving_proto_field_name=True))
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(cfg_json), "model_instance_kind": "CPU"})

    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (1, T, 1, H, W)).astype(np.float32)
    b = rng.uniform(-1, 1, (2, T, 1, H, W)).astype(np.float32)
    requests = [pb.Request(a), pb.Request(a[:, :4].copy()), pb.Request(b, ["frame_score"]),
                pb.Request(a.astype(np.float64)), pb.Request(None)]
    responses = model.execute(requests)
    assert len(responses) == 5
    assert [r.error is None for r in responses] == [True, False, True, False, False]
    ref = OnnxRunner(exports["loop"], providers=["CPUExecutionProvider"], threads=1)
    out_a = {t.name: t.array for t in responses[0].output_tensors}
    assert set(out_a) == {"score_map", "pred_frame", "pred_motion", "frame_score"}
    for name, want in ref.infer(a).items():
        np.testing.assert_allclose(out_a[name], want, rtol=1e-5, atol=1e-5)
    out_b = {t.name: t.array for t in responses[2].output_tensors}
    assert set(out_b) == {"frame_score"}                 # only what the request asked for
    np.testing.assert_allclose(out_b["frame_score"], ref.infer(b)["frame_score"], rtol=1e-5, atol=1e-5)
    assert f"must be (batch, {T}, 1, {H}, {W})" in responses[1].error.msg
    assert "FP32" in responses[3].error.msg and "missing" in responses[4].error.msg


# -- onnxruntime platform ---------------------------------------------------------------------------
def test_onnxruntime_repository_and_tensorrt_accelerator(exports, tmp_path):
    repo = tmp_path / "repo"
    package_repository(repo, "onnxruntime", onnx=exports["chunked"], max_batch=16, threads=2)
    cfg = parse(repo / "m2s2l" / "config.pbtxt")
    assert cfg.platform == "onnxruntime_onnx" and cfg.default_model_filename == "model.onnx"
    assert (repo / "m2s2l" / "1" / "model.onnx").read_bytes() == exports["chunked"].read_bytes()
    assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert cfg.parameters["intra_op_thread_count"].string_value == "2"

    package_repository(repo, "onnxruntime", onnx=exports["chunked"], max_batch=16, ort_tensorrt=True, force=True)
    acc = parse(repo / "m2s2l" / "config.pbtxt").optimization.execution_accelerators.gpu_execution_accelerator
    assert len(acc) == 1 and acc[0].name == "tensorrt"
    p = dict(acc[0].parameters)
    assert p["precision_mode"] == "FP16"
    assert p["trt_profile_min_shapes"] == f"clip:1x5x1x{H}x{W}" and p["trt_profile_max_shapes"] == f"clip:16x5x1x{H}x{W}"

    package_repository(repo, "onnxruntime", onnx=exports["qdq"], ort_tensorrt=True, force=True)
    acc = parse(repo / "m2s2l" / "config.pbtxt").optimization.execution_accelerators.gpu_execution_accelerator
    assert dict(acc[0].parameters)["precision_mode"] == "INT8"
    package_repository(repo, "onnxruntime", onnx=exports["loop"], ort_tensorrt=True, trt_precision="fp32", force=True)
    acc = parse(repo / "m2s2l" / "config.pbtxt").optimization.execution_accelerators.gpu_execution_accelerator
    assert dict(acc[0].parameters)["precision_mode"] == "FP32"


def test_force_replaces_and_refusal_keeps_existing(exports, tmp_path):
    repo = tmp_path / "repo"
    package_repository(repo, "python", onnx=exports["loop"], max_batch=4)
    before = (repo / "m2s2l" / "config.pbtxt").read_text()
    proc = run_cli("package", "--triton", repo, "--onnx", exports["loop"], "--platform", "python")
    assert_user_error(proc, "already exists", "--force")
    assert (repo / "m2s2l" / "config.pbtxt").read_text() == before
    proc = run_cli("package", "--triton", repo, "--onnx", exports["chunked"], "--platform", "onnxruntime", "--force",
                   "--max-batch", "12", "--json", tmp_path / "p.json")
    assert proc.returncode == 0, proc.stderr
    cfg = parse(repo / "m2s2l" / "config.pbtxt")
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 12
    assert not (repo / "m2s2l" / "1" / "model.py").exists()      # the old python model is gone
    assert json.loads((tmp_path / "p.json").read_text())["platform"] == "onnxruntime"
    assert [p.name for p in repo.iterdir()] == ["m2s2l"]


def test_read_config_rejects_what_triton_would(tmp_path):
    bad = tmp_path / "config.pbtxt"
    bad.write_text('name: "m2s2l"\nbackend: "python"\nmax_batch_size: 8\nnot_a_field: 3\n')
    with pytest.raises(UserError, match="not a valid Triton model config"):
        read_config(bad)
    bad.write_text('name: "m2s2l"\ninstance_group { kind: KIND_TPU }\n')
    with pytest.raises(UserError, match="not a valid Triton model config"):
        read_config(bad)


# -- refusals through the CLI ----------------------------------------------------------------------
@pytest.mark.parametrize("case, needles", [
    ("plugin_onnxruntime", ("plugin form", "loop or chunked")),
    ("split", ("--split", "whole-graph")),
    ("fixed", ("fixed batch of 2", "--batch dynamic")),
    ("missing", ("does not exist",)),
    ("not_ours", ("not exported by m2s2l-deploy",)),
    ("int8_without_qdq", ("int8 needs a Q/DQ",)),
    ("qdq_as_fp16", ("Q/DQ", "--trt-precision int8")),
    ("trt_on_python", ("--ort-tensorrt is an option of --platform onnxruntime",)),
    ("trt_on_cpu", ("GPU instances",)),
    ("engine_on_python", ("--engine is for --platform tensorrt_plan",)),
    ("bad_platform", ("--platform must be one of",)),
    ("bad_batch", ("--max-batch must be between 1",)),
])
def test_package_refusals(exports, tmp_path, case, needles):
    other = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(other))
    args = {
        "plugin_onnxruntime": ["--onnx", exports["plugin"], "--platform", "onnxruntime"],
        "split": ["--onnx", exports["split"], "--platform", "python"],
        "fixed": ["--onnx", exports["fixed"], "--platform", "onnxruntime"],
        "missing": ["--onnx", tmp_path / "nope.onnx", "--platform", "python"],
        "not_ours": ["--onnx", other, "--platform", "onnxruntime"],
        "int8_without_qdq": ["--onnx", exports["loop"], "--platform", "onnxruntime", "--ort-tensorrt", "--trt-precision", "int8"],
        "qdq_as_fp16": ["--onnx", exports["qdq"], "--platform", "onnxruntime", "--ort-tensorrt", "--trt-precision", "fp16"],
        "trt_on_python": ["--onnx", exports["loop"], "--platform", "python", "--ort-tensorrt"],
        "trt_on_cpu": ["--onnx", exports["loop"], "--platform", "onnxruntime", "--ort-tensorrt", "--device", "cpu"],
        "engine_on_python": ["--engine", other, "--platform", "python"],
        "bad_platform": ["--onnx", exports["loop"], "--platform", "tensorflow"],
        "bad_batch": ["--onnx", exports["loop"], "--platform", "python", "--max-batch", "0"],
    }[case]
    repo = tmp_path / "repo"
    assert_user_error(run_cli("package", "--triton", repo, *args), *needles)
    assert no_leftovers(repo)


# -- tensorrt_plan: what a sidecar allows -----------------------------------------------------------
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plan(tmp_path: Path, onnx_path: Path, **sidecar) -> Path:
    """A stand-in plan file (never loaded) with a sidecar in build-engine's format."""
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"stand-in bytes: packaging decisions only, no TensorRT runs here")
    side = {"format": "m2s2l-deploy/engine/1",
            "plan": {"file": plan.name, "sha256": _sha(plan), "bytes": plan.stat().st_size},
            "backend": {"name": "tensorrt", "version": "10.13.0", "module": "tensorrt"},
            "precision": "fp16", "targets": ["9.0"], "plugins": [],
            "profile": {"clip": {"min": [1, T, 1, H, W], "opt": [4, T, 1, H, W], "max": [8, T, 1, H, W]}},
            "onnx": {"path": str(onnx_path), "sha256": _sha(onnx_path)}}
    side.update(sidecar)
    (tmp_path / "engine.plan.json").write_text(json.dumps(side))
    return plan


def test_tensorrt_plan_from_full_tensorrt_is_packaged(exports, tmp_path):
    plan = _plan(tmp_path, exports["loop"])
    repo = tmp_path / "repo"
    res = package_repository(repo, "tensorrt_plan", engine=plan, max_batch=8)
    cfg = parse(repo / "m2s2l" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert (repo / "m2s2l" / "1" / "model.plan").read_bytes() == plan.read_bytes()
    assert [i.name for i in cfg.input] == ["clip"] and list(cfg.input[0].dims) == [5, 1, H, W]
    assert any("10.13.0" in n for n in res.notes)


@pytest.mark.parametrize("case, needles", [
    ("rtx", ("TensorRT-RTX plan", "--ort-tensorrt")),
    ("plugin", ("Python plugin (SelectiveScan)", "cannot load")),
    ("no_sidecar", ("no JSON sidecar",)),
    ("tampered", ("is not the plan its sidecar", "sha256 differs")),
    ("other_onnx", ("was not built from",)),
    ("batch_over_profile", ("exceeds", "max batch 8")),
    ("profile_min", ("starts at batch 2",)),
    ("cpu", ("GPU instances only",)),
])
def test_tensorrt_plan_refusals(exports, tmp_path, case, needles):
    extra, args = {}, []
    if case == "rtx":
        extra["backend"] = {"name": "tensorrt-rtx", "version": "1.7.1", "module": "tensorrt_rtx_bindings"}
    elif case == "plugin":
        extra["plugins"] = [{"name": "SelectiveScan", "namespace": "m2s2l", "version": "1"}]
    elif case == "profile_min":
        extra["profile"] = {"clip": {"min": [2, T, 1, H, W], "opt": [4, T, 1, H, W], "max": [8, T, 1, H, W]}}
    plan = _plan(tmp_path, exports["loop"], **extra)
    if case == "no_sidecar":
        (tmp_path / "engine.plan.json").unlink()
    elif case == "tampered":
        plan.write_bytes(b"another plan")
    elif case == "other_onnx":
        args = ["--onnx", exports["chunked"]]
    elif case == "batch_over_profile":
        args = ["--max-batch", "16"]
    elif case == "cpu":
        args = ["--device", "cpu"]
    repo = tmp_path / "repo"
    proc = run_cli("package", "--triton", repo, "--engine", plan, "--platform", "tensorrt_plan", *args)
    assert_user_error(proc, *needles)
    assert no_leftovers(repo)
