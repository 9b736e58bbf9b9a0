"""ONNX export: scan forms vs the reference, graph properties, parity with PyTorch, errors.

Parity bound everywhere: |ort - torch| <= 1e-5 + 1e-4*|torch| elementwise, fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
import torch  # noqa: E402

from m2s2l_deploy import __version__  # noqa: E402
from m2s2l_deploy.export import scan_graph  # noqa: E402
from m2s2l_deploy.contract import InputContract, prepare_frames, sliding_clips  # noqa: E402
from m2s2l_deploy.data import open_dataset  # noqa: E402
from m2s2l_deploy.errors import UserError  # noqa: E402
from m2s2l_deploy.jobs.evaluate import evaluate  # noqa: E402
from m2s2l_deploy.model import M2S2L, OUTPUT_NAMES, preset_config  # noqa: E402
from m2s2l_deploy.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from m2s2l_deploy.export.exporter import export_onnx, split_paths  # noqa: E402
from m2s2l_deploy.runners import OnnxRunner, TorchRunner  # noqa: E402
from m2s2l_deploy.runners.scan_op import extensions_available, register  # noqa: E402
from m2s2l_deploy.ops.scan import selective_scan_ref  # noqa: E402
from cli_helpers import assert_user_error, run_cli  # noqa: E402

from m2s2l_deploy.model.config import preset_config as _preset  # noqa: E402

H, W = _preset("tiny").height, _preset("tiny").width  # the tiny preset's input size
T = _preset("tiny").clip_len  # frames per clip of the tiny preset

ATOL, RTOL = 1e-5, 1e-4
FORMS = ["loop", "chunked", "plugin"]
needs_ext = pytest.mark.skipif(not extensions_available(), reason="onnxruntime-extensions not installed")


def assert_parity(out: dict, ref: dict, names=OUTPUT_NAMES):
    for k in names:
        o, r = np.asarray(out[k]), np.asarray(ref[k])
        assert o.shape == r.shape, (k, o.shape, r.shape)
        excess = np.abs(o - r) - (ATOL + RTOL * np.abs(r))
        assert excess.max() <= 0, f"{k}: worst |ort-torch| exceeds the bound by {excess.max():.3g}"


def session(model_or_path, extensions=False):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    if extensions:
        from onnxruntime_extensions import get_library_path
        so.register_custom_ops_library(get_library_path())
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def random_run(root: Path, preset="tiny", seed=0, **overrides) -> Path:
    """A checkpoint with random weights (identity score statistics)."""
    torch.manual_seed(seed)
    cfg = preset_config(preset, **overrides)
    run = root / f"{preset}-{cfg.height}x{cfg.width}-seed{seed}"
    contract = InputContract(cfg.height, cfg.width, cfg.in_channels, clip_len=cfg.clip_len)
    return save_checkpoint(run, M2S2L(cfg).eval(), contract, {})


@pytest.fixture(scope="module")
def tiny_random(tmp_path_factory) -> Path:
    return random_run(tmp_path_factory.mktemp("ckpt"))


# -- the scan forms alone -------------------------------------------------------------------------
def scan_inputs(batch, dim, state, length, groups, seed=0):
    r = np.random.default_rng(seed)
    f = np.float32
    return dict(u=r.standard_normal((batch, dim, length)).astype(f),
                delta=(0.5 * r.standard_normal((batch, dim, length))).astype(f),
                A=-np.exp(r.standard_normal((dim, state))).astype(f),
                B=r.standard_normal((batch, groups, state, length)).astype(f),
                C=r.standard_normal((batch, groups, state, length)).astype(f),
                D=r.standard_normal(dim).astype(f), delta_bias=(0.1 * r.standard_normal(dim)).astype(f))


def scan_reference(x) -> np.ndarray:
    t = {k: torch.from_numpy(v) for k, v in x.items()}
    return selective_scan_ref(**t, delta_softplus=True).numpy()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("length", [1, 2, 3, 5, 7, 13, 33, 255])
def test_scan_forms_match_reference_on_odd_lengths(form, length):
    """Trip count: exactly L steps (an extra iteration would change the shape or the values)."""
    x = scan_inputs(2, 8, 4, length, groups=2, seed=length)
    model = scan_graph.standalone_model(form, 8, 4, length, groups=2, chunk=8)
    onnx.checker.check_model(model, full_check=True)
    y = session(model).run(None, x)[0]
    assert y.shape == (2, 8, length)
    np.testing.assert_allclose(y, scan_reference(x), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("recurrence", scan_graph.RECURRENCES)
def test_loop_emits_scan_outputs_with_trip_count_L(recurrence):
    """The recurrence's stacked per-step output has L rows (no buffer rewritten, no extra step)."""
    length = 7
    model = scan_graph.standalone_model("loop", 4, 2, length, recurrence=recurrence)
    rec = [n for n in model.graph.node if n.op_type in ("Loop", "Scan")]
    assert len(rec) == 1 and rec[0].op_type == recurrence.capitalize()
    body = rec[0].attribute[0].g
    assert all(n.op_type not in ("ScatterElements", "ScatterND", "Concat") for n in body.node)
    stacked = rec[0].output[1]
    model.graph.output.append(onnx.helper.make_tensor_value_info(stacked, onnx.TensorProto.FLOAT, None))
    x = scan_inputs(1, 4, 2, length, groups=1)
    y, ys = session(model).run(None, x)
    assert ys.shape[0] == length
    np.testing.assert_allclose(y, scan_reference(x), rtol=1e-5, atol=2e-5)


def test_chunked_depth_is_logarithmic():
    assert scan_graph.chunked_steps(256, 256) == 16          # 2*log2(256), one chunk
    assert scan_graph.chunked_steps(4096, 256) == 16 * 16    # 16 chunks
    assert scan_graph.chunked_steps(5, 256) == 6


@needs_ext
def test_plugin_function_body_and_extensions_op_agree():
    x = scan_inputs(2, 8, 4, 37, groups=4)
    model = scan_graph.standalone_model("plugin", 8, 4, 37, groups=4)
    node = model.graph.node[0]
    assert (node.op_type, node.domain) == ("SelectiveScan", "ai.onnx.contrib")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"plugin_namespace": b"m2s2l", "plugin_version": b"1", "delta_softplus": 1}
    assert [(f.domain, f.name) for f in model.functions] == [("ai.onnx.contrib", "SelectiveScan")]
    plain = session(model).run(None, x)[0]
    op = register()
    before = op.calls
    with_ext = session(model, extensions=True).run(None, x)[0]
    assert op.calls == before + 1, "the onnxruntime-extensions op did not run"
    np.testing.assert_allclose(plain, with_ext, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(with_ext, scan_reference(x), rtol=1e-5, atol=2e-5)


# -- exported graphs ------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_export_checks_metadata_and_dynamic_batch(form, tiny_random, tmp_path):
    out = tmp_path / f"{form}.onnx"
    result = export_onnx(tiny_random, out, scan=form)
    assert result.paths == [out] and result.scan_sites == 7
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == ["clip"]
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = {p.key: p.value for p in model.metadata_props}
    ckpt = load_checkpoint(tiny_random)
    assert meta["preset"] == "tiny" and meta["input_size"] == f"{H}x{W}" and meta["clip_len"] == str(T)
    assert meta["channels"] == "1" and meta["normalisation"] == "x/127.5-1"
    assert InputContract.from_dict(json.loads(meta["contract"])) == ckpt.contract
    assert meta["checkpoint_sha256"] == ckpt.weights_sha256 and meta["scan_form"] == form
    assert meta["toolkit_version"] == __version__
    assert json.loads(meta["output_names"]) == list(OUTPUT_NAMES)
    kinds = {n.op_type for n in model.graph.node}
    assert ("SelectiveScan" in kinds) == (form == "plugin")
    # dynamic batch: 1 and 3 clips give the PyTorch numbers
    x = np.random.default_rng(0).uniform(-1, 1, (3, T, 1, H, W)).astype(np.float32)
    torch_out = TorchRunner(ckpt).infer(x)
    with OnnxRunner(out, threads=1) as runner:
        assert runner.contract == ckpt.contract
        assert_parity(runner.infer(x), torch_out)
        assert_parity(runner.infer(x[:1]), {k: v[:1] for k, v in torch_out.items()})


def test_fixed_batch_and_opset(tiny_random, tmp_path):
    out = tmp_path / "fixed.onnx"
    export_onnx(tiny_random, out, scan="chunked", opset=18, batch=3)
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
    assert {p.key: p.value for p in model.metadata_props}["batch"] == "3"


def test_loop_graph_does_not_unroll(tiny_random, tmp_path):
    """Same node count (subgraphs included) at the tiny size and at 128x128: the recurrence is not unrolled."""
    big = random_run(tmp_path, height=128, width=128)
    counts = {}
    for run, size in ((tiny_random, 64), (big, 128)):
        for form in ("loop", "plugin"):
            res = export_onnx(run, tmp_path / f"{form}{size}.onnx", scan=form)
            counts[form, size] = res.nodes[res.paths[0].name]
    assert counts["loop", 64] == counts["loop", 128]
    assert counts["plugin", 64] == counts["plugin", 128]
    model = onnx.load(str(tmp_path / "loop128.onnx"))
    assert sum(n.op_type == "Loop" for n in model.graph.node) == 7


def test_split_export_links_and_streams(tiny_random, tmp_path):
    res = export_onnx(tiny_random, tmp_path / "s.onnx", scan="loop", split=True)
    enc_path, head_path = split_paths(tmp_path / "s.onnx")
    assert res.paths == [enc_path, head_path]
    meta = [{p.key: p.value for p in onnx.load(str(p)).metadata_props} for p in res.paths]
    assert meta[0]["graph"] == "encoder" and meta[1]["graph"] == "head"
    assert meta[0]["split_id"] == meta[1]["split_id"] and meta[0]["split_head"] == head_path.name
    enc = onnx.load(str(enc_path))
    assert [i.name for i in enc.graph.input] == ["frames"] and [o.name for o in enc.graph.output] == ["feat2", "feat3"]
    frames = np.random.default_rng(1).uniform(-1, 1, (14, 1, H, W)).astype(np.float32)
    clips = frames[sliding_clips(len(frames), T)]                       # overlapping clips
    ref = TorchRunner(tiny_random).infer(clips)
    with OnnxRunner(tmp_path / "s.onnx", threads=1) as runner:           # NAME.onnx finds the pair
        outs = [runner.infer(clips[i:i + 4]) for i in range(0, len(clips), 4)]
        assert runner.frames_encoded == len(frames), "each frame must be encoded exactly once"
    assert_parity({k: np.concatenate([o[k] for o in outs]) for k in OUTPUT_NAMES}, ref)
    enc_path.unlink()
    with pytest.raises(UserError, match="encoder"):
        OnnxRunner(head_path)


@pytest.mark.parametrize("form", [*FORMS, "split"])
def test_sparse_history_exports_in_every_form(form, tmp_path):
    """A sparse history (train --sparse-history) picks its frames inside the graph: every scan form,
    and the split pair whose head picks them from the per-frame features, give PyTorch's numbers."""
    run = random_run(tmp_path, clip_len=7, sparse_history=True)
    assert load_checkpoint(run).model_config.encoded_frames() == (0, 2, 4, 5)
    split = form == "split"
    export_onnx(run, tmp_path / "sparse.onnx", scan="loop" if split else form, split=split)
    frames = np.random.default_rng(3).uniform(-1, 1, (10, 1, H, W)).astype(np.float32)
    clips = frames[sliding_clips(len(frames), 7)]
    with OnnxRunner(tmp_path / "sparse.onnx", threads=1) as runner:
        assert_parity(runner.infer(clips), TorchRunner(run).infer(clips))


def test_runner_refuses_foreign_or_mismatched_files(tiny_random, tmp_path):
    foreign = tmp_path / "foreign.onnx"
    onnx.save(scan_graph.standalone_model("loop", 4, 2, 3), str(foreign))
    with pytest.raises(UserError, match="not exported by m2s2l-deploy"):
        OnnxRunner(foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model")
    with pytest.raises(UserError):
        OnnxRunner(garbage)
    with pytest.raises(UserError, match="does not exist"):
        OnnxRunner(tmp_path / "missing.onnx")
    out = tmp_path / "m.onnx"
    export_onnx(tiny_random, out, scan="chunked")
    other = random_run(tmp_path, seed=1)
    with pytest.raises(UserError, match="another checkpoint"):
        OnnxRunner(out, checkpoint=other)


def test_failed_write_leaves_no_file(tiny_random, tmp_path, monkeypatch):
    out = tmp_path / "x" / "m.onnx"

    def half_then_fail(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(UserError, match="No space left"):
        export_onnx(tiny_random, out, scan="loop")
    assert list(out.parent.iterdir()) == []


def test_cli_bad_input(tiny_random, tmp_path):
    assert_user_error(run_cli("export", "--checkpoint", tmp_path / "nope"), "does not exist")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((Path(tiny_random) / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"garbage")
    out = tmp_path / "o.onnx"
    assert_user_error(run_cli("export", "--checkpoint", corrupt, "--output", out), "corrupt")
    assert_user_error(run_cli("export", "--checkpoint", tiny_random, "--scan", "magic", "--output", out), "--scan")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert_user_error(run_cli("export", "--checkpoint", tiny_random, "--output", blocker / "m.onnx"), "not a folder")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "corrupt"]
    assert_user_error(run_cli("evaluate", "--checkpoint", tiny_random, "--data", tmp_path,
                              "--backend", "onnxruntime"), "--onnx")


# -- parity on real clips with the trained checkpoint (slow: needs the shared trained run) --------
@pytest.fixture(scope="module")
def real_clips(trained_run, scene_test):
    """16 real clips: 8 consecutive sliding clips from each of two test videos, and torch outputs."""
    ckpt = load_checkpoint(trained_run)
    videos = [v for v in open_dataset(scene_test).test if v.labels is not None and v.labels.any()][:2]
    groups = []
    for v in videos:
        frames = prepare_frames(v.load(), ckpt.contract)
        idx = sliding_clips(len(frames), ckpt.contract.clip_len)
        start = max(0, int(np.argmax(v.labels)) - ckpt.contract.clip_len - 4)   # around the anomaly
        groups.append(frames[idx[start:start + 8]])
    runner = TorchRunner(ckpt)
    return groups, [runner.infer(g) for g in groups]


@pytest.fixture(scope="module")
def trained_exports(trained_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    files = {form: export_onnx(trained_run, root / f"{form}.onnx", scan=form).paths[0] for form in FORMS}
    export_onnx(trained_run, root / "split.onnx", scan="plugin", split=True)
    files["split"] = root / "split.onnx"
    return files


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["loop", "chunked", "plugin", "plugin+ext", "split", "split+ext"])
def test_parity_on_real_clips(variant, trained_exports, trained_run, real_clips):
    ext = variant.endswith("+ext")
    if ext and not extensions_available():
        pytest.skip("onnxruntime-extensions not installed")
    groups, refs = real_clips
    assert sum(len(g) for g in groups) >= 16
    with OnnxRunner(trained_exports[variant.removesuffix("+ext")], checkpoint=trained_run, threads=1,
                    extensions=ext) as runner:
        for clips, ref in zip(groups, refs):
            assert_parity(runner.infer(clips), ref)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["loop", "split"])
def test_auc_matches_pytorch(variant, trained_exports, trained_run, scene_test, eval_report):
    with OnnxRunner(trained_exports[variant], checkpoint=trained_run) as runner:
        report = evaluate(runner, scene_test, smooth_sigma=3.0, log=lambda *_: None)
    assert report["n_frames"] == eval_report["n_frames"]
    for key in ("auc_micro", "auc_macro", "auc_micro_causal", "auc_macro_causal"):
        assert abs(report[key] - eval_report[key]) <= 0.001, (key, report[key], eval_report[key])
    assert abs(report["smoothed"]["auc_micro"] - eval_report["smoothed"]["auc_micro"]) <= 0.001


@pytest.mark.slow
def test_cli_export_split_then_evaluate_onnxruntime(trained_run, small_scene, tmp_path):
    out = tmp_path / "export" / "m.onnx"
    proc = run_cli("export", "--checkpoint", trained_run, "--scan", "chunked", "--split", "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert all(p.exists() for p in split_paths(out))
    proc = run_cli("evaluate", "--checkpoint", trained_run, "--data", small_scene, "--backend", "onnxruntime",
                   "--onnx", out, "--json", tmp_path / "eval.json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["runner"] == "onnxruntime-split-chunked"
    ref = evaluate(TorchRunner(trained_run), small_scene, smooth_sigma=3.0, log=lambda *_: None)
    for key in ("auc_micro", "auc_micro_causal"):
        assert abs(report[key] - ref[key]) <= 0.001


@pytest.mark.slow
def test_paper_preset_parity_at_full_size(tmp_path):
    """Random paper weights, 2 clips at 256x256, every form (loop included: ~5 s per clip here)."""
    run = random_run(tmp_path, preset="paper")
    x = np.random.default_rng(2).uniform(-1, 1, (2, _preset("paper").clip_len, 1, 256, 256)).astype(np.float32)
    ref = TorchRunner(run).infer(x)
    for form in FORMS:
        out = export_onnx(run, tmp_path / f"paper-{form}.onnx", scan=form).paths[0]
        with OnnxRunner(out, threads=2) as runner:
            assert_parity(runner.infer(x), ref)
