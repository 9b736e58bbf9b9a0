"""benchmarks/score_study.py: recombining a model's components under other score settings.

At the checkpoint's own floor and temperature, with no lighting shift, the study must give what
`evaluate` gives (an independent path: the model's in-graph score and its stored calibration)."""

import json

import pytest
import torch
from cli_helpers import load_benchmark

from m2s2l_deploy.model.config import BACKGROUND_FLOOR, SCORE_TAU


@pytest.fixture(scope="module")
def score_study():
    return load_benchmark("score_study")


@pytest.mark.slow
def test_own_setting_reproduces_evaluate(score_study, trained_run, scene_test, eval_report, tmp_path, capsys):
    floor = BACKGROUND_FLOOR * 127.5
    out = tmp_path / "study.json"
    assert score_study.main(["--pair", str(trained_run), str(scene_test), "--shifts", "0", "6",
                             "--floors", "0", f"{floor!r}", "--taus", "0.5", str(SCORE_TAU),
                             "--spreads", "0", "1", "--json", str(out)]) == 0
    assert torch.is_grad_enabled()          # it leaves the process's autograd mode as it found it
    results = json.loads(out.read_text())["results"]
    own = results[f"floor {floor:g}, tau {SCORE_TAU:g}"]["+0"]
    assert own["auc_micro"] == pytest.approx(eval_report["auc_micro"], abs=1e-6)
    assert own["auc_micro_causal"] == pytest.approx(eval_report["auc_micro_causal"], abs=1e-6)
    assert own["auc_macro"] == pytest.approx(eval_report["auc_macro"], abs=1e-6)
    assert len(results) == 8 and all(set(r) == {"+0", "+6"} for r in results.values())
    # the between-video spread widens every std, so it reaches the causal score
    wide = results[f"floor {floor:g}, tau {SCORE_TAU:g}, spread 1"]["+0"]
    assert wide["auc_micro_causal"] != own["auc_micro_causal"]
    assert results["floor 0, tau 0.5"]["+6"] != results["floor 0, tau 0.5"]["+0"]   # the shift reaches the test videos
    assert "| floor 0, tau 0.5 |" in capsys.readouterr().out


def test_bad_input_is_one_line(score_study, tmp_path, capsys):
    assert score_study.main(["--pair", str(tmp_path / "none"), str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert score_study.main(["--pair", str(tmp_path), str(tmp_path), "--taus", "0"]) == 1
    assert "--taus must be > 0" in capsys.readouterr().err
    (tmp_path / "out.json").mkdir()
    assert score_study.main(["--pair", str(tmp_path), str(tmp_path), "--json", str(tmp_path / "out.json")]) == 1
    assert "is a folder" in capsys.readouterr().err           # refused before any model is read
