"""FP16 and Q/DQ INT8 ONNX: structure and ONNX Runtime execution; calibration clips.

A random-weight tiny model is enough to check where the precision changes land; the AUC effect on
the trained model is measured in test_engine_build.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxconverter_common")

from m2s2l_deploy.contract import InputContract, prepare_frames, sliding_clips  # noqa: E402
from m2s2l_deploy.data import open_dataset  # noqa: E402
from m2s2l_deploy.engine.calibration import calibration_set  # noqa: E402
from m2s2l_deploy.engine.precision import is_scan_node, score_head_names, to_fp16, to_int8  # noqa: E402
from m2s2l_deploy.errors import UserError  # noqa: E402
from m2s2l_deploy.model import M2S2L, preset_config  # noqa: E402
from m2s2l_deploy.model.checkpoint import save_checkpoint  # noqa: E402
from m2s2l_deploy.export.exporter import export_onnx  # noqa: E402

H, W = preset_config("tiny").height, preset_config("tiny").width  # the tiny preset's input size
T = preset_config("tiny").clip_len  # frames per clip of the tiny preset

FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Random-weight tiny checkpoint exported with the loop and the plugin scan."""
    root = tmp_path_factory.mktemp("prec")
    torch.manual_seed(0)
    cfg = preset_config("tiny")
    run = save_checkpoint(root / "run", M2S2L(cfg), InputContract(height=cfg.height, width=cfg.width, clip_len=cfg.clip_len), {})
    return {form: export_onnx(run, root / f"{form}.onnx", scan=form).paths[0] for form in ("loop", "plugin")}


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, (12, T, 1, H, W)).astype(np.float32)


def _types(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _run(path_or_model, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = 1, 3
    data = path_or_model.SerializeToString() if hasattr(path_or_model, "SerializeToString") else str(path_or_model)
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"clip": x})))


def _subgraphs(model):
    """Loop bodies' nodes (shape inference may annotate the bodies; their computation must not change)."""
    return {n.name: [[b.SerializeToString() for b in a.g.node] for a in n.attribute
                     if a.type == onnx.AttributeProto.GRAPH] for n in model.graph.node if n.op_type == "Loop"}


@pytest.mark.parametrize("form", ["loop", "plugin"])
def test_fp16_keeps_scans_sensitive_ops_and_score_head_in_fp32(exports, clips, form):
    src = onnx.load(str(exports[form]))
    half, info = to_fp16(src)
    types = _types(half)
    nodes = list(half.graph.node)
    # the bulk is FP16: every Conv / MatMul outside the score head (which holds the speed head's
    # MLP) reads FP16 activations and weights
    head = score_head_names(src.graph)
    assert head
    dense = [n for n in nodes if n.op_type in ("Conv", "ConvTranspose", "MatMul") and n.name not in head]
    assert dense and all(types.get(n.input[0]) == HALF and types.get(n.input[1]) == HALF for n in dense)
    # ... but every scan node, every sensitive op and the score head compute in FP32
    kept = [n for n in nodes if is_scan_node(n) or n.name in head
            or n.op_type in ("Exp", "Softplus", "Log", "Pow", "LayerNormalization")]
    assert len(kept) > len(head)
    for n in kept:
        for x in list(n.input) + list(n.output):
            assert types.get(x) != HALF, (n.name, n.op_type, x)
    # scan bodies come back unchanged
    assert _subgraphs(half) == _subgraphs(src)
    if form == "plugin":
        assert len(half.functions) == 1 and half.functions[0].SerializeToString() == src.functions[0].SerializeToString()
    else:
        assert _subgraphs(src)
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [FLOAT] * 4
    meta = {p.key: p.value for p in half.metadata_props}
    assert meta["precision"] == "fp16" and meta["checkpoint_sha256"] == \
        {p.key: p.value for p in src.metadata_props}["checkpoint_sha256"]
    assert info["fp16_initializers"] > 0 and "onnxconverter-common" in info["tool"]
    # it runs in ONNX Runtime, close to FP32 yet not the same numbers
    ref, out = _run(exports[form], clips[:2]), _run(half, clips[:2])
    for k in ("pred_frame", "pred_motion"):
        err = np.abs(out[k] - ref[k]).max()
        assert 0 < err < 2e-2 * max(1.0, np.abs(ref[k]).max()), (k, err)


@pytest.mark.parametrize("form", ["loop", "plugin"])
def test_int8_qdq_is_per_channel_symmetric_outside_the_scans(exports, clips, form):
    src = onnx.load(str(exports[form]))
    q, info = to_int8(src, clips, "minmax")
    g = q.graph
    inits = {t.name: t for t in g.initializer}
    dq = [n for n in g.node if n.op_type == "DequantizeLinear"]
    qn = [n for n in g.node if n.op_type == "QuantizeLinear"]
    assert dq and qn and info["quantize_bias"] is False
    weights = [n for n in dq if n.input[0] in inits]
    assert weights
    for n in weights:
        w = onnx.numpy_helper.to_array(inits[n.input[0]])
        scale = onnx.numpy_helper.to_array(inits[n.input[1]])
        zp = onnx.numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 else np.zeros(1)
        assert w.dtype == np.int8                           # no int32 bias Q/DQ (TensorRT rejects it)
        axis = [a.i for a in n.attribute if a.name == "axis"][0]
        assert scale.size == w.shape[axis]                  # one scale per output channel
        assert np.all(zp == 0)
    assert sum(onnx.numpy_helper.to_array(inits[n.input[1]]).size > 1 for n in weights) > len(weights) // 2
    qdq_out = {o for n in dq + qn for o in n.output}
    heads = {n.name for n in src.graph.node if n.op_type == "Conv" and "_decoder/head/" in n.name}
    assert len(heads) == 2 and set(info["fp32_output_layers"]) == heads   # reconstruction heads stay FP32
    for n in g.node:
        if n.name in heads:
            assert not (set(n.input) & qdq_out), n.name
    # the temporal encoders' projections stay fp32 (found from the graph: their module path)
    temporal = {n.name for n in src.graph.node if n.op_type in ("MatMul", "Conv", "Gemm")
                and any(part.startswith("temporal") for part in n.name.split("/"))}
    assert temporal and set(info["fp32_temporal_layers"]) | set(info["fp32_input_layers"]) >= temporal
    assert set(info["fp32_temporal_layers"]) <= temporal
    for n in g.node:
        if n.name in temporal:
            assert not (set(n.input) & qdq_out), n.name
    spatial = [n for n in g.node if n.name.startswith("/spatial/stages") and n.op_type == "MatMul"]
    assert spatial and all(set(n.input) & qdq_out for n in spatial)   # the spatial stages are INT8
    for n in g.node:
        if is_scan_node(n):
            assert not (set(n.input) & qdq_out), n.name        # no Q/DQ feeds a scan node directly
            assert n.op_type not in ("QuantizeLinear", "DequantizeLinear")
    ref, out = _run(exports[form], clips[:2]), _run(q, clips[:2])
    err = np.abs(out["pred_frame"] - ref["pred_frame"]).max()
    assert 0 < err < 0.1, err
    assert {p.key: p.value for p in q.metadata_props}["precision"] == "int8"


def test_calibration_methods_give_different_ranges(exports, clips, monkeypatch):
    from m2s2l_deploy.engine import precision

    monkeypatch.setitem(precision.CALIB_OPTIONS, "entropy", {"num_bins": 256, "num_quantized_bins": 128})  # CI time
    src = onnx.load(str(exports["loop"]))
    scales = {}
    for method in ("minmax", "entropy", "percentile"):
        q, info = to_int8(src, clips[:6], method)
        assert info["method"] == method
        act = [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
        scales[method] = np.array([float(inits[n.input[1]]) for n in act])
    assert not np.allclose(scales["minmax"], scales["entropy"])
    assert not np.allclose(scales["minmax"], scales["percentile"])
    assert np.all(scales["percentile"] <= scales["minmax"] * (1 + 1e-6))   # percentile clips the tails


# -- calibration clips ---------------------------------------------------------------------------
def test_calibration_clips_come_from_training_videos_and_are_cached(small_scene, tmp_path):
    contract = InputContract(height=64, width=64, channels=1, clip_len=5)
    cache = tmp_path / "calibration"
    clips, info = calibration_set(contract, small_scene, 6, cache)
    assert clips.shape == (6, 5, 1, 64, 64) and clips.dtype == np.float32 and not info["cached"]
    ds = open_dataset(small_scene)
    train = np.concatenate([prepare_frames(v.load(), contract)[sliding_clips(v.num_frames(), 5)] for v in ds.train])
    test = np.concatenate([prepare_frames(v.load(), contract)[sliding_clips(v.num_frames(), 5)] for v in ds.test])
    for c in clips:
        assert np.any(np.all(train == c, axis=(1, 2, 3, 4)))
        assert not np.any(np.all(test == c, axis=(1, 2, 3, 4)))
    assert len({c.tobytes() for c in clips}) == 6
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and json.loads((cache / files[0]).read_text())["clips"] == 6
    again, info2 = calibration_set(contract, small_scene, 6, cache)
    assert info2["cached"] and np.array_equal(again, clips)
    calibration_set(contract, small_scene, 4, cache)                  # other options: another key
    assert len(list(cache.glob("clips-*.npy"))) == 2
    reused, info3 = calibration_set(contract, None, 4, cache)         # no --calib-data: newest matching set
    assert info3["cached"] and len(reused) == 4
    with pytest.raises(UserError, match="needs --calib-data"):
        calibration_set(InputContract(height=32, width=32, channels=1, clip_len=5), None, 4, cache)


def test_empty_calibration_sets_are_refused(tmp_path):
    from m2s2l_deploy.data.synth import generate_scene

    short = tmp_path / "short"
    generate_scene(short, seed=2, size=(64, 64), n_train=1, n_test=1, train_frames=3, test_frames=12)
    contract = InputContract(height=64, width=64, channels=1, clip_len=5)
    with pytest.raises(UserError, match="empty calibration set"):
        calibration_set(contract, short, 8, tmp_path / "cal")
    with pytest.raises(UserError, match="--calib-clips must be >= 1"):
        calibration_set(contract, short, 0, tmp_path / "cal")
    assert not (tmp_path / "cal").exists() or not any((tmp_path / "cal").iterdir())


def test_int8_ranges_cache_is_reused(exports, clips, tmp_path):
    src = onnx.load(str(exports["plugin"]))
    cache = tmp_path / "ranges.json"
    first, info1 = to_int8(src, clips[:4], "minmax", ranges_cache=cache)
    assert cache.is_file() and not info1["ranges_reused"]
    # a reused cache wins over new clips: the scales stay those of the first calibration
    second, info2 = to_int8(src, clips[4:8] * 0.1, "minmax", ranges_cache=cache)
    assert info2["ranges_reused"]
    scales = lambda m: [t.SerializeToString() for t in m.graph.initializer if t.name.endswith("_scale")]  # noqa: E731
    assert scales(first) == scales(second)
    third, _ = to_int8(src, clips[4:8] * 0.1, "minmax")
    assert scales(third) != scales(first)
