"""bench on bad input: one `error:` line, exit 2, no traceback, and no output file left.

Every case asks for all four outputs (JSON, CSV, plot, annotated video) in a fresh folder and checks
afterwards that the folder holds nothing: outputs are written only after a complete run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m2s2l_deploy.data.synth import render_video_file
from cli_helpers import assert_user_error, run_cli

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def good_avi(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.avi"
    render_video_file(path, seed=6, n_frames=30, events=())
    return path


def bench_all_outputs(video, out: Path, *model_args):
    return run_cli("bench", video, *model_args, "--threads", "1", "--json", out / "b.json", "--scores-csv",
                   out / "s.csv", "--plot", out / "p.png", "--annotate", out / "a.mp4")


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def check(proc, out: Path, *needles) -> None:
    assert_user_error(proc, *needles)
    assert_nothing_written(out)


def test_missing_file(trained_run, tmp_path):
    out = tmp_path / "out"
    check(bench_all_outputs(tmp_path / "nope.mp4", out, "--checkpoint", trained_run), out, "not found")


def test_zero_byte_file(trained_run, tmp_path):
    video, out = tmp_path / "empty.mp4", tmp_path / "out"
    video.write_bytes(b"")
    check(bench_all_outputs(video, out, "--checkpoint", trained_run), out, "empty")


def test_text_file_named_mp4(trained_run, tmp_path):
    video, out = tmp_path / "notes.mp4", tmp_path / "out"
    video.write_text("these are meeting notes, not a video\n" * 50)
    check(bench_all_outputs(video, out, "--checkpoint", trained_run), out, "notes.mp4")


def test_truncated_video(trained_run, good_avi, tmp_path):
    data = good_avi.read_bytes()
    video, out = tmp_path / "cut.avi", tmp_path / "out"
    video.write_bytes(data[: int(len(data) * 0.6)])
    check(bench_all_outputs(video, out, "--checkpoint", trained_run), out, "truncated")


def test_video_shorter_than_one_clip(trained_run, tmp_path):
    video, out = tmp_path / "short.avi", tmp_path / "out"
    render_video_file(video, seed=6, n_frames=3, events=())
    check(bench_all_outputs(video, out, "--checkpoint", trained_run), out, "fewer than one clip")


def test_unreadable_frames_mid_video(trained_run, good_avi, tmp_path):
    """Random bytes over a stretch in the middle of the stream: decoding stops there."""
    data = bytearray(good_avi.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4000] = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    video, out = tmp_path / "damaged.avi", tmp_path / "out"
    video.write_bytes(bytes(data))
    check(bench_all_outputs(video, out, "--checkpoint", trained_run), out, "unreadable frames")


def test_onnx_for_another_model(trained_run, good_avi, tmp_path):
    import torch

    from m2s2l_deploy.contract import InputContract
    from m2s2l_deploy.model import M2S2L, preset_config
    from m2s2l_deploy.model.checkpoint import save_checkpoint
    from m2s2l_deploy.export.exporter import export_onnx

    torch.manual_seed(1)
    cfg = preset_config("tiny")
    other = save_checkpoint(tmp_path / "other", M2S2L(cfg).eval(),
                            InputContract(cfg.height, cfg.width, cfg.in_channels, fps=10.0, clip_len=cfg.clip_len), {})
    onnx_file = export_onnx(other, tmp_path / "other.onnx", scan="loop").paths[0]
    out = tmp_path / "out"
    check(bench_all_outputs(good_avi, out, "--onnx", onnx_file, "--checkpoint", trained_run), out, "another checkpoint")
    not_ours = tmp_path / "random.onnx"
    not_ours.write_bytes(b"\x08\x07" + bytes(100))
    check(bench_all_outputs(good_avi, out, "--onnx", not_ours), out, "random.onnx")


def test_unwritable_output(trained_run, good_avi, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = tmp_path / "out"
    proc = run_cli("bench", good_avi, "--checkpoint", trained_run, "--json", blocker / "b.json",
                   "--scores-csv", out / "s.csv")
    check(proc, out, "cannot write")
    assert blocker.read_text() == "x"
    proc = run_cli("bench", good_avi, "--checkpoint", trained_run, "--plot", out / "p.jpg")
    check(proc, out, ".png")
