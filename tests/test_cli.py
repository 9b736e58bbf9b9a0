"""The CLI end to end, and its contract for bad input: one line on stderr, exit 2, no traceback."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, run_cli


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in ("synth", "train", "evaluate", "info", "demo"):
        assert cmd in proc.stdout


def test_info_json():
    proc = run_cli("info", "--preset", "paper", "--json")
    r = json.loads(proc.stdout)
    assert r["preset"] == "paper" and r["gflops_per_clip"] <= 20.1


@pytest.mark.slow
def test_synth_train_evaluate_chain(tmp_path):
    scene = tmp_path / "scene"
    proc = run_cli("synth", scene, "--seed", "5", "--size", "64x64", "--train", "2", "--test", "2")
    assert proc.returncode == 0, proc.stderr
    assert (scene / "scene.json").exists()
    run = tmp_path / "run"
    proc = run_cli("train", "--data", scene, "--out", run, "--epochs", "1", "--batch", "4",
                   "--json", tmp_path / "train.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "train.json").read_text())["steps"] > 0
    proc = run_cli("evaluate", "--checkpoint", run, "--data", scene, "--json", tmp_path / "eval.json",
                   "--plots", tmp_path / "plots")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    for key in ("auc_micro", "auc_macro", "auc_micro_causal", "auc_macro_causal", "baseline_auc_micro",
                "per_video", "n_frames"):
        assert key in report
    assert len(list((tmp_path / "plots").glob("*.png"))) == 2
    # training into an existing run without --resume is refused
    assert_user_error(run_cli("train", "--data", scene, "--out", run, "--epochs", "1"), "--resume")


def _frames_layout(root: Path, n=8, labels=None):
    import cv2
    for split in ("training", "testing"):
        d = root / split / "frames" / "01"
        d.mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(d / f"{i}.png"), np.full((32, 32), 10 * i, np.uint8))
    (root / "testing" / "test_frame_mask").mkdir()
    np.save(root / "testing" / "test_frame_mask" / "01.npy",
            np.zeros(n if labels is None else labels, np.uint8))


@pytest.mark.parametrize("case", ["missing", "empty", "unknown_layout", "corrupt_image", "label_mismatch"])
def test_bad_data_is_one_line_error(tmp_path, case):
    root = tmp_path / "data"
    if case == "empty":
        root.mkdir()
    elif case == "unknown_layout":
        root.mkdir()
        (root / "notes.txt").write_text("hello")
    elif case == "corrupt_image":
        _frames_layout(root)
        (root / "training" / "frames" / "01" / "3.png").write_bytes(b"\x89PNG garbage")
    elif case == "label_mismatch":
        _frames_layout(root, labels=5)
    proc = run_cli("train", "--data", root, "--out", tmp_path / "run", "--epochs", "1")
    assert_user_error(proc)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_corrupt_checkpoint_is_one_line_error(tmp_path, small_scene):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "model.safetensors").write_bytes(b"\0" * 64)
    assert_user_error(run_cli("evaluate", "--checkpoint", run, "--data", small_scene), "checkpoint")


def test_bad_options_are_one_line_errors(tmp_path):
    assert_user_error(run_cli("synth", tmp_path / "x", "--size", "big"), "--size")
    assert_user_error(run_cli("synth", tmp_path / "y", "--events", "cyclist,dragon"), "dragon")
    assert not (tmp_path / "y").exists()
    assert_user_error(run_cli("info", "--preset", "huge"), "preset")
    proc = run_cli("train", "--data", tmp_path, "--out", tmp_path / "r", "--epochs", "1", "--minutes", "1")
    assert_user_error(proc, "one of --epochs, --minutes, --steps")
    proc = run_cli("train", "--data", tmp_path, "--out", tmp_path / "r", "--steps", "0")
    assert_user_error(proc, "--steps must be >= 1")
    proc = run_cli("train", "--data", tmp_path, "--out", tmp_path / "r", "--steps", "1", "--clip-len", "2")
    assert_user_error(proc, "--clip-len must be >= 3")


def test_bad_device_is_a_one_line_error(tmp_path, small_scene):
    proc = run_cli("train", "--data", small_scene, "--out", tmp_path / "r", "--steps", "1", "--device", "tpu")
    assert_user_error(proc, "unknown device 'tpu'")
    proc = run_cli("evaluate", "--checkpoint", tmp_path, "--data", small_scene, "--backend", "onnxruntime",
                   "--onnx", tmp_path / "m.onnx", "--device", "cuda")
    assert_user_error(proc, "--device applies to --backend torch")
    if not torch.cuda.is_available():
        proc = run_cli("train", "--data", small_scene, "--out", tmp_path / "r", "--steps", "1", "--device", "cuda")
        assert_user_error(proc, "no CUDA GPU")
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_synth_refuses_non_empty_output(tmp_path):
    out = tmp_path / "scene"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert_user_error(run_cli("synth", out))
    assert (out / "keep.txt").read_text() == "x"
