"""Checkpoints round-trip through safetensors only, and every broken one is a one-line UserError."""

import json

import pytest
import torch

from m2s2l_deploy.contract import InputContract
from m2s2l_deploy.errors import UserError
from m2s2l_deploy.model import M2S2L, preset_config
from m2s2l_deploy.model.checkpoint import CONFIG, WEIGHTS, load_checkpoint, save_checkpoint


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = M2S2L(preset_config("tiny")).eval()
    model.score_mean.copy_(torch.arange(1.0, 1.0 + len(model.score_mean)))
    run = tmp_path / "run"
    save_checkpoint(run, model, InputContract(fps=10.0, clip_len=model.cfg.clip_len), {"training": {"steps": 1}})
    return run, model


def test_roundtrip_same_outputs_without_pickle(saved, monkeypatch):
    run, model = saved
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load (pickle) must not be used"))
    ckpt = load_checkpoint(run)
    loaded = ckpt.build_model()
    clip = torch.rand(1, model.cfg.clip_len, 1, model.cfg.height, model.cfg.width) * 2 - 1
    with torch.no_grad():
        for a, b in zip(model(clip), loaded(clip)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ckpt.contract.fps == 10.0 and ckpt.info["training"]["steps"] == 1
    assert (run / WEIGHTS).read_bytes()[8:9] == b"{"          # safetensors: u64 header size, then JSON
    assert not list(run.glob("*.tmp"))


@pytest.mark.parametrize("breakage", ["garbage_weights", "truncated_weights", "no_config", "bad_json",
                                      "wrong_shape", "no_weights", "bad_contract"])
def test_broken_checkpoints_are_user_errors(saved, breakage):
    run, _ = saved
    if breakage == "garbage_weights":
        (run / WEIGHTS).write_bytes(b"not a safetensors file at all")
    elif breakage == "truncated_weights":
        data = (run / WEIGHTS).read_bytes()
        (run / WEIGHTS).write_bytes(data[: len(data) // 2])
    elif breakage == "no_config":
        (run / CONFIG).unlink()
    elif breakage == "no_weights":
        (run / WEIGHTS).unlink()
    elif breakage == "bad_json":
        (run / CONFIG).write_text("{ not json")
    elif breakage == "wrong_shape":
        cfg = json.loads((run / CONFIG).read_text())
        cfg["model"]["dims"] = [8, 16, 32]
        (run / CONFIG).write_text(json.dumps(cfg))
    elif breakage == "bad_contract":
        cfg = json.loads((run / CONFIG).read_text())
        cfg["contract"]["channels"] = 7
        (run / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(UserError) as e:
        load_checkpoint(run)
    assert "\n" not in str(e.value)


def test_missing_folder_is_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
