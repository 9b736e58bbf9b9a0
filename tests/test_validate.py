"""validate: fp32 and Q/DQ INT8 ONNX pass; a weight perturbation that leaves the AUC in
place fails on correlation / output error; gate arithmetic; bad input.

The test set is three labelled videos (64 frames each) of the seed-1 scene; AUCs are checked
against scikit-learn on the same scores, errors against NumPy. The INT8 test uses the whole seed-1
test set instead: on 3 x 64 frames with a clean video, per-video min-max stretches the clean video's
noise to [0, 1], and an INT8 copy that correlates 0.999 with PyTorch moved the paper-protocol micro
AUC by 0.011-0.020 on two checkpoints (0.004 on the 7 full videos), so the 0.01 gate measured the
subset's size there, not the quantizer.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from m2s2l_deploy.export.exporter import export_onnx  # noqa: E402
from m2s2l_deploy.runners.factory import make_runner  # noqa: E402
from m2s2l_deploy.jobs.validate import (GATE_LIMITS, RunRecord, compare, error_stats,  # noqa: E402
                                   load_test_set, record_run, run_validate)
from cli_helpers import assert_user_error, run_cli  # noqa: E402

VIDEOS, FRAMES = ("03", "04", "05"), 64
QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def subset(scene_test, tmp_path_factory) -> Path:
    """Three labelled test videos cut to 64 frames (frames linked, labels sliced), same scene.json."""
    root = tmp_path_factory.mktemp("validate-data") / "subset"
    for v in VIDEOS:
        d = root / "testing" / "frames" / v
        d.mkdir(parents=True)
        for f in sorted((scene_test / "testing" / "frames" / v).iterdir())[:FRAMES]:
            (d / f.name).symlink_to(f.resolve())
        (root / "testing" / "test_frame_mask").mkdir(parents=True, exist_ok=True)
        labels = np.load(scene_test / "testing" / "test_frame_mask" / f"{v}.npy")[:FRAMES]
        np.save(root / "testing" / "test_frame_mask" / f"{v}.npy", labels)
    shutil.copy(scene_test / "scene.json", root / "scene.json")
    return root


@pytest.fixture(scope="module")
def fp32_onnx(trained_run, tmp_path_factory) -> Path:
    return export_onnx(trained_run, tmp_path_factory.mktemp("validate-onnx") / "tiny-loop.onnx", scan="loop").paths[0]


@pytest.fixture(scope="module")
def test_set(trained_run, subset):
    return load_test_set(subset, "auto", make_runner(checkpoint=trained_run).contract, **QUIET)


@pytest.fixture(scope="module")
def reference_runner(trained_run):
    return make_runner(checkpoint=trained_run, threads=1)


@pytest.fixture(scope="module")
def reference(reference_runner, test_set) -> RunRecord:
    return record_run(reference_runner, test_set, batch=16)


def candidate_report(path, trained_run, test_set, reference, reference_runner, precision=None):
    """Gates only: timing is skipped here (the CLI tests time with the defaults)."""
    return run_validate(trained_run, onnx=path, data=None, precision=precision, threads=1, reference=reference,
                        reference_runner=reference_runner, test_set=test_set, timing_batches=0, **QUIET)


# -- passing candidates ---------------------------------------------------------------------------
def test_fp32_onnx_passes(trained_run, fp32_onnx, subset, test_set, reference, tmp_path):
    proc = run_cli("validate", "--checkpoint", trained_run, "--onnx", fp32_onnx, "--data", subset, "--threads", "1",
                   "--json", tmp_path / "v.json", "--markdown", tmp_path / "v.md")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = json.loads((tmp_path / "v.json").read_text())
    assert rep["passed"] and rep["precision"] == "fp32" and rep["n_frames"] == len(VIDEOS) * FRAMES
    # the reference AUC is scikit-learn's on the PyTorch scores (recomputed here, in another process)
    y = np.concatenate([v.labels for v in test_set])
    s = np.concatenate([reference.frame_scores[v.name] for v in test_set])
    assert rep["reference"]["auc_micro_causal"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert abs(rep["candidate"]["auc_micro_causal"] - roc_auc_score(y, s)) <= GATE_LIMITS["fp32"]["delta_auc"]
    md = (tmp_path / "v.md").read_text()
    assert "PASS" in md and "speed-up" in md and "| gate |" in md
    # speed from the timing phase: both runners on the same 9 batches (3 per 64-frame video), interleaved
    timing = rep["timing"]
    assert timing["settings"]["batch"] == 16 and timing["settings"]["warmup"] == 3
    assert timing["settings"]["interleaved"] and timing["settings"]["n_batches"] == 9
    for role in ("reference", "candidate"):
        assert rep[role]["ms_per_clip"] == pytest.approx(timing["results"][role]["ms_per_clip"], abs=1e-3)
        assert timing["results"][role]["n_batches"] == 9
    assert rep["speedup"] == pytest.approx(rep["reference"]["ms_per_clip"] / rep["candidate"]["ms_per_clip"], rel=1e-3)
    assert "median of 9 interleaved batches of 16 clips after 3 warm-ups" in md


@pytest.fixture(scope="module")
def full_test_set(trained_run, scene_test):
    return load_test_set(scene_test, "auto", make_runner(checkpoint=trained_run).contract, **QUIET)


def test_int8_qdq_onnx_passes(trained_run, fp32_onnx, scene_train, full_test_set, tmp_path):
    """Q/DQ INT8 from the engine builder's quantizer (onnxruntime.quantization QDQ, per-channel, no bias
    quantization; scans, frame embedding and reconstruction heads stay fp32), calibrated on clips of
    the training videos, passes the int8 gates."""
    from m2s2l_deploy.engine.calibration import calibration_set
    from m2s2l_deploy.engine.precision import to_int8

    contract = make_runner(checkpoint=trained_run).contract
    clips, _ = calibration_set(contract, scene_train, n_clips=48, cache_dir=tmp_path / "calib")
    model, _ = to_int8(onnx.load(str(fp32_onnx)), clips, "minmax")
    out = tmp_path / "tiny-int8.onnx"
    onnx.save(model, str(out))
    quantized = onnx.load(str(out))
    assert sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node) > 10
    assert {p.key for p in quantized.metadata_props} >= {"contract", "checkpoint_sha256"}
    runner = make_runner(onnx=out, checkpoint=trained_run, threads=1)
    assert runner.precision == "int8"
    reference_runner = make_runner(checkpoint=trained_run, threads=1)
    reference = record_run(reference_runner, full_test_set, batch=16)
    rep = candidate_report(out, trained_run, full_test_set, reference, reference_runner)
    assert rep["n_frames"] == sum(len(v.labels) for v in full_test_set)
    assert rep["timing"] is None and rep["speedup"] is None and "not timed" in rep["markdown"]
    assert rep["precision"] == "int8" and rep["passed"], rep["gates"]
    assert rep["output_error"]["frame_score"]["max_abs"] > 1e-3     # really quantized, not fp32 in disguise


# -- a perturbation ΔAUC misses -------------------------------------------------------------------
def perturb(model: "onnx.ModelProto", name: str, scale: float) -> "onnx.ModelProto":
    """Copy with Gaussian noise of ``scale`` x RMS added to initializer ``name`` (seeded by the name)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    init = next(i for i in m.graph.initializer if i.name == name)
    w = numpy_helper.to_array(init)
    noise = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(w.shape)
    init.CopyFrom(numpy_helper.from_array((w + scale * np.sqrt(np.mean(w * w)) * noise).astype(w.dtype), name))
    return m


def weights_in_graph_order(model: "onnx.ModelProto", n: int) -> list[str]:
    """Float weights (>= 64 values) by their first use: the input side first, where errors spread most."""
    inits = {i.name: i for i in model.graph.initializer
             if i.data_type == onnx.TensorProto.FLOAT and int(np.prod(i.dims)) >= 64}
    order = []
    for node in model.graph.node:
        for x in node.input:
            if x in inits and x not in order:
                order.append(x)
    return order[:n]


def test_gates_catch_a_perturbation_that_auc_misses(trained_run, fp32_onnx, subset, test_set, reference,
                                                    reference_runner, tmp_path):
    """Search (deterministic: weights in graph order, noise scales growing) for a perturbation whose
    ΔAUC stays inside the fp32 limit but that breaks the correlation gate (preferred) or the output
    error gate; then the CLI must exit non-zero on it although its ΔAUC gate alone passes."""
    base = onnx.load(str(fp32_onnx))
    tol = GATE_LIMITS["fp32"]["delta_auc"]
    found, tried = None, []
    for name in weights_in_graph_order(base, 2):
        for scale in (0.01, 0.03, 0.1, 0.3):
            path = tmp_path / f"perturbed-{len(tried)}.onnx"
            onnx.save(perturb(base, name, scale), str(path))
            rep = candidate_report(path, trained_run, test_set, reference, reference_runner, precision="fp32")
            gates = {g["name"]: g for g in rep["gates"]}
            tried.append((name, scale, {k: round(g["value"], 6) for k, g in gates.items()}))
            if not gates["delta_auc"]["passed"]:
                break                                   # larger noise moves the AUC as well
            if not gates["correlation"]["passed"]:
                found = (path, rep)
                break
            if not gates["output_error"]["passed"] and found is None:
                found = (path, rep)                     # keep looking for a correlation failure
        if found is not None:
            break
    assert found is not None, f"no perturbation with ΔAUC inside {tol} broke a gate: {tried}"
    path, rep = found
    proc = run_cli("validate", "--checkpoint", trained_run, "--onnx", path, "--data", subset, "--threads", "1",
                   "--json", tmp_path / "bad.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "validation FAILED" in proc.stderr
    cli = json.loads((tmp_path / "bad.json").read_text())
    gates = {g["name"]: g for g in cli["gates"]}
    assert gates["delta_auc"]["passed"], tried          # ΔAUC alone would ship this model ...
    assert not cli["passed"] and cli["failed_gates"] == rep["failed_gates"], tried   # ... the other gates do not


# -- gate arithmetic without a model --------------------------------------------------------------
def fake_record(scores: dict, runner="x") -> RunRecord:
    fs = np.concatenate(list(scores.values()))
    return RunRecord(runner=runner, frame_scores=scores, samples={"frame_score": fs[:, None]}, n_clips=fs.size,
                     data_key=tuple((k, (len(v), 1, 4, 4)) for k, v in scores.items()))


def fake_timing(ref_ms: float, cand_ms: float, batch: int = 16) -> dict:
    """What ``time_pair`` returns, for runners that took ``ref_ms`` / ``cand_ms`` per clip."""
    settings = {"batch": batch, "warmup": 3, "n_batches": 20, "interleaved": True,
                "threads": {"reference": {"threads": 2}, "candidate": {}}}
    return {"settings": settings,
            "results": {role: {"ms_per_call": ms * batch, "ms_per_clip": ms, "p10_ms_per_clip": ms,
                               "p90_ms_per_clip": ms, "n_batches": 20, "warmup": 3}
                        for role, ms in (("reference", ref_ms), ("candidate", cand_ms))}}


def fake_videos(labels: dict):
    from m2s2l_deploy.jobs.validate import LabelledVideo
    return [LabelledVideo(k, np.zeros((len(v), 1, 4, 4), np.float32), v) for k, v in labels.items()]


def test_gate_limits_follow_precision():
    rng = np.random.default_rng(0)
    labels = {"a": (np.arange(200) % 7 == 0).astype(np.uint8), "b": (np.arange(150) % 5 == 0).astype(np.uint8)}
    ref = {k: rng.normal(size=len(v)) + 4 * v for k, v in labels.items()}
    noisy = {k: s + 0.15 * rng.normal(size=len(s)) for k, s in ref.items()}
    videos = fake_videos(labels)
    r_ref, r_noisy = fake_record(ref, "torch"), fake_record(noisy, "cand")
    same = compare(r_ref, fake_record(ref, "cand"), videos, "fp32")
    assert same["passed"] and same["speedup"] is None and same["candidate"]["ms_per_clip"] is None
    fp32, int8 = compare(r_ref, r_noisy, videos, "fp32"), compare(r_ref, r_noisy, videos, "int8")
    assert not fp32["passed"] and "correlation" in fp32["failed_gates"]
    s_ref, s_noisy = np.concatenate(list(ref.values())), np.concatenate(list(noisy.values()))
    assert fp32["correlation"]["pearson"] == pytest.approx(np.corrcoef(s_ref, s_noisy)[0, 1], abs=1e-9)
    assert int8["gates"][1]["passed"] == (min(int8["correlation"].values()) >= 0.97)
    assert compare(r_ref, r_noisy, videos, "fp32", auc_tol=1.0)["gates"][0]["passed"]
    nan = {k: np.where(np.arange(len(s)) == 3, np.nan, s) for k, s in ref.items()}
    assert not compare(r_ref, fake_record(nan), videos, "fp16")["passed"]


def test_delta_auc_resolution_warns_when_the_set_is_too_small_for_the_gate():
    """Small score errors on 2 short videos (one clean, stretched to [0, 1] by min-max) move ΔAUC by
    more than the fp16 limit: a warning. The same error level on 6 long well-separated videos does
    not; identical scores resolve to exactly 0."""
    from m2s2l_deploy.jobs.validate import delta_auc_resolution, markdown_report
    rng = np.random.default_rng(1)
    small = {"anom": (np.arange(60) >= 40).astype(np.uint8), "clean": np.zeros(60, np.uint8)}
    big = {f"v{i}": (np.arange(400) % 50 < 10).astype(np.uint8) for i in range(6)}
    for labels, sep, warned in ((small, 3.0, True), (big, 6.0, False)):
        ref = {k: rng.normal(size=len(v)) + sep * v for k, v in labels.items()}
        cand = {k: s + 0.05 * rng.normal(size=len(s)) for k, s in ref.items()}
        assert delta_auc_resolution(ref, ref, labels) == 0.0
        report = compare(fake_record(ref, "torch"), fake_record(cand, "cand"), fake_videos(labels), "fp16")
        assert (report["delta_auc_resolution"] >= GATE_LIMITS["fp16"]["delta_auc"]) == warned
        assert bool(report["warnings"]) == warned
        assert ("cannot resolve the ΔAUC gate" in markdown_report(report)) == warned


def test_speed_comes_from_the_timing_phase():
    """ms/clip, speed-up and the settings line are the timing phase's; without it: not timed."""
    from m2s2l_deploy.jobs.validate import markdown_report
    labels = {"a": (np.arange(80) % 9 == 0).astype(np.uint8)}
    scores = {"a": np.random.default_rng(2).normal(size=80) + 3 * labels["a"]}
    args = fake_record(scores, "torch"), fake_record(scores, "cand"), fake_videos(labels), "fp32"
    timed = compare(*args, timing=fake_timing(10.0, 4.0))
    assert timed["reference"]["ms_per_clip"] == 10.0 and timed["candidate"]["ms_per_clip"] == 4.0
    assert timed["candidate"]["ms_per_call_p50"] == 64.0 and timed["speedup"] == pytest.approx(2.5)
    assert timed["timing"]["settings"]["interleaved"]
    md = markdown_report(timed)
    assert "| ms per clip | 10.00 | 4.00 | 2.50x speed-up |" in md
    assert "median of 20 interleaved batches of 16 clips after 3 warm-ups; threads: reference 2" in md
    untimed = compare(*args)
    assert untimed["speedup"] is None and untimed["timing"] is None
    assert "not timed" in markdown_report(untimed)


def test_error_stats_definition():
    ref = np.array([0.0, 1.0, -2.0, 10.0])
    cand = ref + np.array([0.1, 0.0, 0.2, -1.0])
    rms = np.sqrt(np.mean(ref ** 2))
    rel = np.abs(cand - ref) / np.maximum(np.abs(ref), rms)
    got = error_stats(ref, cand)
    assert got["max_abs"] == pytest.approx(1.0) and got["mean_abs"] == pytest.approx(0.325)
    assert got["p99_rel"] == pytest.approx(np.percentile(rel, 99))


# -- bad input ------------------------------------------------------------------------------------
def test_validate_rejects_onnx_of_another_model(trained_run, test_set, tmp_path):
    import torch

    from m2s2l_deploy.contract import InputContract
    from m2s2l_deploy.errors import UserError
    from m2s2l_deploy.model import M2S2L, preset_config
    from m2s2l_deploy.model.checkpoint import save_checkpoint

    torch.manual_seed(2)
    cfg = preset_config("tiny")
    other = save_checkpoint(tmp_path / "other", M2S2L(cfg).eval(), InputContract(cfg.height, cfg.width, cfg.in_channels, clip_len=cfg.clip_len), {})
    path = export_onnx(other, tmp_path / "other.onnx", scan="loop").paths[0]
    out = tmp_path / "out"
    with pytest.raises(UserError, match="another checkpoint"):
        run_validate(trained_run, onnx=path, data=None, test_set=test_set, json_out=out / "r.json",
                     markdown_out=out / "r.md", **QUIET)
    assert not out.exists()


def test_validate_usage_errors(trained_run, fp32_onnx, subset, test_set, tmp_path):
    from m2s2l_deploy.errors import UserError

    assert_user_error(run_cli("validate", "--checkpoint", trained_run, "--data", subset), "--onnx")
    with pytest.raises(UserError, match="--precision"):
        run_validate(trained_run, onnx=fp32_onnx, data=subset, precision="fp8", **QUIET)
    with pytest.raises(UserError, match=".md"):
        run_validate(trained_run, onnx=fp32_onnx, data=subset, markdown_out=tmp_path / "r.txt", **QUIET)
    with pytest.raises(UserError, match="auc-tol"):
        run_validate(trained_run, onnx=fp32_onnx, data=subset, auc_tol=-1.0, **QUIET)
    assert_user_error(run_cli("validate", "--checkpoint", trained_run, "--onnx", fp32_onnx, "--data", subset,
                              "--timing-batches", "-1"), "--timing-batches")
    with pytest.raises(UserError, match="--warmup"):
        run_validate(trained_run, onnx=fp32_onnx, data=subset, warmup=-1, **QUIET)
    with pytest.raises(UserError, match="long enough for one timing batch"):     # before the accuracy runs
        run_validate(trained_run, onnx=fp32_onnx, data=subset, batch=64, **QUIET)
    with pytest.raises(ValueError, match="reference_runner"):    # a recorded reference alone cannot be timed
        run_validate(trained_run, onnx=fp32_onnx, data=None, test_set=test_set, reference=object(), **QUIET)


def test_validate_table_renders_an_undefined_correlation_as_n_a():
    """A candidate whose scores are constant has no correlation (validate stores None and fails the
    gate); the demo's table shows n/a and FAIL instead of raising."""
    from rich.console import Console

    from m2s2l_deploy.cli.tables import validate_table

    def report(corr, passed):
        return {"reference": {"auc_micro": 0.9}, "candidate": {"auc_micro": 0.5, "runner": "onnxruntime"},
                "delta_auc": {"auc_micro": -0.4}, "correlation": corr, "passed": passed,
                "output_error": {"frame_score": {"p99_rel": 1.0}}}
    reports = {"fp32": report({"pearson": 0.99995, "spearman": 0.9999}, True),
               "broken": report({"pearson": None, "spearman": None}, False)}
    console = Console(width=80, record=True, color_system=None)
    console.print(validate_table(reports))
    text = console.export_text()
    broken = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("broken"))
    assert "n/a" in broken and "FAIL" in broken and "not timed" in broken
    assert "0.9999" in next(line for line in text.splitlines() if line.lstrip("│ ").startswith("fp32"))
