"""`demo` end to end on the shared scenes and checkpoint (copied in, so the demo reuses them instead of
training): evaluate, export, validate fp32 and INT8 ONNX, engine build when a backend exists, bench."""

import json
import shutil

import pytest

from cli_helpers import run_cli

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_demo_runs_the_whole_chain(scene_train, scene_test, trained_run, tmp_path):
    from m2s2l_deploy.engine.backend import available_backends

    work = tmp_path / "demo"
    work.mkdir()
    shutil.copytree(scene_train, work / "scene-seed0")
    shutil.copytree(scene_test, work / "scene-seed1")
    shutil.copytree(trained_run, work / "run")
    proc = run_cli("demo", "--workdir", work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reusing trained checkpoint" in proc.stderr
    for title in ("micro AUC", "validate vs PyTorch", "bench results"):
        assert title in proc.stdout
    report = json.loads((work / "report.json").read_text())
    deploy = report["deploy"]
    v = deploy["validate"]
    assert set(v) == {"fp32, batch 16", "fp32, batch 1", "int8, batch 16"} and all(r["passed"] for r in v.values())
    assert all(r["candidate"]["runner"] == "onnxruntime-plugin+numba" for r in v.values())
    assert {r["timing"]["settings"]["batch"] for r in v.values()} == {1, 16}
    assert v["fp32, batch 16"]["candidate"]["auc_micro"] == pytest.approx(report["auc_micro"], abs=1e-3)
    assert deploy["bench"]["n_frames"] == 120 and (work / "bench.png").stat().st_size > 0
    if available_backends():
        plan = work / "engines" / "m2s2l-tiny-loop-fp16.plan"
        assert deploy["engine"]["plan"] == str(plan) and plan.stat().st_size > 0
        assert json.loads(plan.with_suffix(".plan.json").read_text())["precision"] == "fp16"
    else:
        assert deploy["engine"] is None and "no TensorRT backend installed" in proc.stderr
