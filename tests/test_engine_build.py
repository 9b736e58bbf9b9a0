"""Real TensorRT-RTX ahead-of-time builds on this CPU-only machine, and what can be
checked of them without a GPU.

- the trained tiny model (``trained_run``, exported here) is built fp32 / fp16 / int8, each with
  the loop scan and the SelectiveScan plugin; the `paper` preset (random weights) fp16 with the
  plugin; the plugin layers are read from the network TensorRT built and their fields checked
  against the ONNX nodes and round-tripped through the creator;
- the FP16 and Q/DQ INT8 ONNX files written beside the plans are evaluated in ONNX Runtime (CPU)
  against the FP32 export on the unseen synthetic scene: |dAUC| <= 0.002 (fp16), <= 0.01 (int8);
- the TensorRT runner refuses plans that do not match the model or the device, and fails in one
  line where nothing can run them (here: no GPU).
No plan is executed: no machine here can run a TensorRT engine.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
trt = pytest.importorskip("tensorrt_rtx_bindings")
pytest.importorskip("onnxconverter_common")

from cli_helpers import run_cli  # noqa: E402
from m2s2l_deploy.contract import InputContract  # noqa: E402
from m2s2l_deploy.engine import sidecar as sc  # noqa: E402
from m2s2l_deploy.engine.build import build_engine  # noqa: E402
from m2s2l_deploy.engine.plugin import register_plugin  # noqa: E402
from m2s2l_deploy.errors import UserError  # noqa: E402
from m2s2l_deploy.jobs.evaluate import evaluate  # noqa: E402
from m2s2l_deploy.model import M2S2L, preset_config  # noqa: E402
from m2s2l_deploy.model.checkpoint import save_checkpoint  # noqa: E402
from m2s2l_deploy.export.exporter import export_onnx  # noqa: E402
from m2s2l_deploy.runners.onnx_runner import OnnxRunner  # noqa: E402
from m2s2l_deploy.runners.tensorrt_runner import TensorRTRunner, preflight  # noqa: E402

from m2s2l_deploy.model.config import preset_config as _preset  # noqa: E402

H, W = _preset("tiny").height, _preset("tiny").width  # the tiny preset's input size
T = _preset("tiny").clip_len  # frames per clip of the tiny preset

pytestmark = pytest.mark.slow
FORMS = ("loop", "plugin")
PRECISIONS = ("fp32", "fp16", "int8")


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def scan_nodes(path) -> dict[str, int]:
    """SelectiveScan plugin nodes of an ONNX file -> their delta_softplus attribute."""
    model = onnx.load(str(path))
    return {n.name: next(a.i for a in n.attribute if a.name == "delta_softplus")
            for n in model.graph.node if n.op_type == "SelectiveScan" and n.domain == "ai.onnx.contrib"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def exports(trained_run, work) -> dict[str, Path]:
    return {form: export_onnx(trained_run, work / f"tiny-{form}.onnx", scan=form).paths[0] for form in FORMS}


@pytest.fixture(scope="module")
def builds(exports, scene_train, work) -> dict:
    """Every (form, precision) of tiny, one after another (single-threaded builder).

    fp32/loop goes through the CLI (with --json and a timing cache), the rest through the API.
    Entries: {"plan", "sidecar" (dict), "network" (API builds), "seconds"}.
    """
    out, cal = work / "plans", work / "calibration"
    done = {}
    cache = work / "timing.cache"
    t0 = time.perf_counter()
    proc = run_cli("build-engine", "--onnx", exports["loop"], "--output", out / "tiny-loop-fp32.plan",
                   "--timing-cache", cache, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    done[("loop", "fp32")] = {"plan": Path(summary["plan"]), "sidecar": sc.load_sidecar(summary["plan"]),
                              "cli": summary, "timing_cache": cache, "seconds": time.perf_counter() - t0}
    for form in FORMS:
        for precision in PRECISIONS:
            if (form, precision) in done:
                continue
            r = build_engine(exports[form], out / f"tiny-{form}-{precision}.plan", precision=precision,
                             calib_data=scene_train if precision == "int8" else None, calib_dir=cal)
            done[(form, precision)] = {"plan": r.plan, "sidecar": sc.load_sidecar(r.plan), "network": r.network,
                                       "precision_onnx": r.precision_onnx, "seconds": r.build_seconds}
    return done


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("form", FORMS)
def test_tiny_builds_real_strongly_typed_plans(builds, exports, trained_run, form, precision):
    b = builds[(form, precision)]
    side = b["sidecar"]
    assert b["plan"].stat().st_size > 1_000_000
    assert side["backend"] == {"name": "tensorrt-rtx", "version": trt.__version__, "module": "tensorrt_rtx_bindings"}
    assert side["precision"] == precision and side["strongly_typed"] is True
    assert side["device"].startswith("AOT/CPU") and side["targets"] == sc.RTX_DEFAULT_TARGETS
    assert side["profile"]["clip"] == {"min": [1, T, 1, H, W], "opt": [4, T, 1, H, W], "max": [16, T, 1, H, W]}
    assert side["onnx"]["sha256"] == sha256(exports[form])
    assert side["model"]["checkpoint_sha256"] == sha256(trained_run / "model.safetensors")
    assert side["model"]["scan_form"] == form and side["build_seconds"] > 0
    net = side["network"]
    types = net["layer_types"]
    if form == "loop":
        assert types.get("TRIP_LIMIT", 0) >= 7 and types.get("RECURRENCE", 0) >= 7 and "PLUGIN_V3" not in types
        assert side["plugins"] == []
    else:
        assert types["PLUGIN_V3"] == len(scan_nodes(exports[form])) == 7
        assert side["plugins"][0]["name"] == "SelectiveScan" and side["plugins"][0]["layers"] == 7
    if precision == "fp32":
        assert net["half_layers"] == 0 and net["int8_layers"] == 0
    elif precision == "fp16":
        assert net["half_layers"] > 100 and net["int8_layers"] == 0
        assert sha256(b["precision_onnx"]) == side["built_onnx"]["sha256"]
    else:
        assert types["QUANTIZE"] > 0 and types["DEQUANTIZE"] > 0 and net["int8_layers"] > 0
        assert side["precision_info"]["quantize_bias"] is False


@pytest.mark.parametrize("precision", PRECISIONS)
def test_plugin_layers_are_in_the_built_network_and_their_fields_round_trip(builds, exports, precision):
    b = builds[("plugin", precision)]
    expected = scan_nodes(exports["plugin"])                 # independent: read from the ONNX itself
    layers = b["network"]["plugin_layers"]
    assert sorted(p["name"] for p in layers) == sorted(expected)
    creator = register_plugin(trt)
    for p in layers:
        assert p["fields"] == {"delta_softplus": expected[p["name"]]}
        assert p["serialized_fields"] == p["fields"]
        fc = trt.PluginFieldCollection([trt.PluginField("delta_softplus", np.array([p["serialized_fields"]["delta_softplus"]],
                                                                                   np.int32), trt.PluginFieldType.INT32)])
        again = creator.create_plugin(p["name"], fc, trt.TensorRTPhase.RUNTIME)
        assert int(again.delta_softplus) == expected[p["name"]]
    plan = b["plan"].read_bytes()
    assert b"SelectiveScan" in plan and b"m2s2l" in plan        # what the plan stores to find the creator


def test_cli_build_summary_and_timing_cache(builds):
    b = builds[("loop", "fp32")]
    s = b["cli"]
    assert s["precision"] == "fp32" and s["plugin_layers"] == 0 and s["layers"] == b["sidecar"]["network"]["layers"]
    assert s["sidecar"] == str(sc.sidecar_path(b["plan"]))
    assert b["timing_cache"].is_file() and b["timing_cache"].stat().st_size > 0


def test_int8_calibration_is_drawn_once_and_cached(builds, work):
    first, second = builds[("loop", "int8")]["sidecar"], builds[("plugin", "int8")]["sidecar"]
    assert first["calibration"]["cached"] is False and second["calibration"]["cached"] is True
    assert first["calibration"]["key"] == second["calibration"]["key"]
    assert first["calibration"]["clips"] == 64 and first["calibration"]["videos"] == 8
    cal = work / "calibration"
    assert len(list(cal.glob("clips-*.npy"))) == 1 and len(list(cal.glob("ranges-*.json"))) == 2


# -- numerics of the reduced-precision ONNX in ONNX Runtime (CPU) --------------------------------
@pytest.fixture(scope="module")
def reports(builds, exports, trained_run, scene_test) -> dict:
    """AUC reports of the fp32 / fp16 / Q/DQ int8 loop-form ONNX under ONNX Runtime on the CPU."""
    files = {"fp32": exports["loop"], "fp16": builds[("loop", "fp16")]["precision_onnx"],
             "int8": builds[("loop", "int8")]["precision_onnx"]}
    from m2s2l_deploy.contract import prepare_frames, sliding_clips
    from m2s2l_deploy.data import open_dataset

    video = open_dataset(scene_test).test[0]
    runners = {k: OnnxRunner(p, checkpoint=trained_run, threads=1) for k, p in files.items()}
    frames = prepare_frames(video.load(), runners["fp32"].contract)
    clips = frames[sliding_clips(len(frames), runners["fp32"].contract.clip_len)[:32]]
    out = {}
    for k, runner in runners.items():
        out[k] = evaluate(runner, scene_test, log=lambda *_: None)
        out[k]["first_scores"] = runner.infer(clips)["frame_score"]
    return out


@pytest.mark.parametrize("precision, tol", [("fp16", 0.002), ("int8", 0.01)])
def test_reduced_precision_onnx_keeps_the_auc(reports, precision, tol):
    ref, got = reports["fp32"], reports[precision]
    print(f"{precision}: micro AUC {got['auc_micro']:.4f} vs fp32 {ref['auc_micro']:.4f}, "
          f"macro {got['auc_macro']:.4f} vs {ref['auc_macro']:.4f}")
    assert abs(got["auc_micro"] - ref["auc_micro"]) <= tol
    assert abs(got["auc_macro"] - ref["auc_macro"]) <= tol
    # the gate compares different models: the reduced precision really changed the scores
    diff = np.abs(got["first_scores"] - ref["first_scores"])
    assert diff.max() > 1e-4 * np.abs(ref["first_scores"]).max(), diff.max()


# -- the paper preset ------------------------------------------------------------------------------
def test_paper_fp16_plugin_builds(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = preset_config("paper")
    run = save_checkpoint(tmp_path / "run", M2S2L(cfg), InputContract(height=cfg.height, width=cfg.width, clip_len=cfg.clip_len), {})
    path = export_onnx(run, tmp_path / "paper-plugin.onnx", scan="plugin").paths[0]
    r = build_engine(path, tmp_path / "paper-plugin-fp16.plan", precision="fp16")
    side = sc.load_sidecar(r.plan)
    assert side["model"]["preset"] == "paper" and side["profile"]["clip"]["max"] == [16, cfg.clip_len, 1, 256, 256]
    assert sorted(p["name"] for p in r.plugin_layers) == sorted(scan_nodes(path)) and len(r.plugin_layers) == 12
    assert side["network"]["half_layers"] > 100
    with capsys.disabled():
        print(f"\n[paper fp16 plugin] TensorRT-RTX {trt.__version__} AOT build {r.build_seconds:.1f} s, "
              f"FP16 conversion {side['convert_seconds']:.1f} s, plan {r.plan.stat().st_size / 1e6:.1f} MB")


def test_sparse_history_fp16_plugin_builds(tmp_path):
    """train --sparse-history picks 4 of 6 history frames inside the graph; the plan takes the whole
    7-frame clip and every scan site becomes a plugin layer."""
    torch.manual_seed(0)
    cfg = preset_config("tiny", clip_len=7, sparse_history=True)
    run = save_checkpoint(tmp_path / "run", M2S2L(cfg), InputContract(height=cfg.height, width=cfg.width, clip_len=7), {})
    path = export_onnx(run, tmp_path / "sparse-plugin.onnx", scan="plugin").paths[0]
    r = build_engine(path, tmp_path / "sparse-plugin-fp16.plan", precision="fp16")
    side = sc.load_sidecar(r.plan)
    assert side["profile"]["clip"]["max"] == [16, 7, 1, H, W]
    assert sorted(p["name"] for p in r.plugin_layers) == sorted(scan_nodes(path))


# -- the runner's refusals -----------------------------------------------------------------------
def _copy_pair(plan: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(plan, dst / plan.name)
    shutil.copy(sc.sidecar_path(plan), sc.sidecar_path(dst / plan.name))
    return dst / plan.name


RTX_GPU = sc.DeviceInfo("NVIDIA GeForce RTX 3090", (8, 6))


def test_runner_preflight_accepts_the_matching_model_and_gpu(builds, exports, trained_run):
    b = builds[("plugin", "fp16")]
    side, backend = preflight(b["plan"], checkpoint=trained_run, onnx=exports["plugin"], device_info=RTX_GPU)
    assert side["precision"] == "fp16" and backend.is_rtx
    preflight(b["plan"], onnx=b["precision_onnx"], device_info=RTX_GPU)     # the fp16 ONNX it was built from


def test_runner_refuses_another_model(builds, exports, tmp_path):
    plan = builds[("plugin", "fp16")]["plan"]
    torch.manual_seed(7)
    cfg = preset_config("tiny")
    other = save_checkpoint(tmp_path / "other", M2S2L(cfg), InputContract(height=cfg.height, width=cfg.width, clip_len=cfg.clip_len), {})
    with pytest.raises(UserError, match="built from another model than checkpoint"):
        preflight(plan, checkpoint=other, device_info=RTX_GPU)
    with pytest.raises(UserError, match="was not built from .*tiny-loop.onnx"):
        preflight(plan, onnx=exports["loop"], device_info=RTX_GPU)


@pytest.mark.parametrize("device, needle", [
    (sc.DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0)), "TensorRT-RTX does not run on compute capability 9.0"),
    (sc.DeviceInfo("Tesla T4", (7, 5)), "built for compute capability 8.0, 8.6, 8.9, 12.0, 12.1, not 7.5"),
])
def test_runner_refuses_other_devices(builds, device, needle):
    with pytest.raises(UserError) as e:
        preflight(builds[("loop", "fp32")]["plan"], device_info=device)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_runner_refuses_broken_pairs_and_other_backends(builds, tmp_path, monkeypatch):
    plan = builds[("loop", "fp32")]["plan"]
    tampered = _copy_pair(plan, tmp_path / "tampered")
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(UserError, match="not the plan its sidecar describes"):
        preflight(tampered, device_info=RTX_GPU)
    lonely = tmp_path / "lonely" / plan.name
    lonely.parent.mkdir()
    shutil.copy(plan, lonely)
    with pytest.raises(UserError, match="has no sidecar"):
        preflight(lonely, device_info=RTX_GPU)
    older = _copy_pair(plan, tmp_path / "older")
    side = json.loads(sc.sidecar_path(older).read_text())
    side["backend"]["version"] = "1.0.0.1"
    sc.sidecar_path(older).write_text(json.dumps(side))
    with pytest.raises(UserError, match="built by tensorrt-rtx 1.0.0.1 but tensorrt-rtx"):
        preflight(older, device_info=RTX_GPU)
    monkeypatch.setenv("M2S2L_HIDE_TENSORRT", "all")
    with pytest.raises(UserError, match="'tensorrt-rtx' is not installed"):
        preflight(plan, device_info=RTX_GPU)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_runner_without_a_gpu_fails_in_one_line(builds, trained_run):
    with pytest.raises(UserError) as e:
        TensorRTRunner(builds[("plugin", "fp32")]["plan"], checkpoint=trained_run)
    assert "no CUDA GPU is visible" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="CUDA devices only"):
        TensorRTRunner(builds[("plugin", "fp32")]["plan"], device="cpu")


@pytest.mark.parametrize("form, precision", [("loop", "fp32"), ("loop", "int8"), ("plugin", "fp16")])
def test_polygraphy_check_beside_the_plan_runs_its_onnxrt_half(builds, form, precision):
    """The data loader and the command script written beside each plan: step 1 (ONNX Runtime on the
    ONNX the plan was built from, through Polygraphy's own CLI) runs here, and its saved outputs are
    what our ONNX Runtime runner computes on the same feeds. Step 2 needs a GPU and is only written."""
    import importlib.util
    import subprocess
    import sys

    pytest.importorskip("polygraphy")
    from polygraphy.comparator import RunResults

    b = builds[(form, precision)]
    side, folder = b["sidecar"], b["plan"].parent
    check = side["polygraphy"]
    script = (folder / check["script"]).read_text()
    assert (folder / check["data_loader"]).is_file() and "polygraphy run" in script
    built_onnx = Path(side["built_onnx"]["path"])
    assert check["onnxrt"][2] in (built_onnx.name, str(built_onnx.resolve()))
    if form == "plugin":
        assert check["trt"] == [] and "validate --engine" in script       # Python plugins: not loadable there
    else:
        assert check["trt"][check["trt"].index("run") + 1] == b["plan"].name and "--load-outputs" in check["trt"]
        assert "POLYGRAPHY_USE_TENSORRT_RTX=1" in check["trt"]            # built by TensorRT-RTX here

    polygraphy = [sys.executable, "-c", "import sys; from polygraphy.tools._main import main; sys.exit(main())"]
    proc = subprocess.run(polygraphy + check["onnxrt"][1:], cwd=folder, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    saved = RunResults.load(str(folder / check["onnxrt"][-1]))
    (_, iterations), = list(saved.items())

    spec = importlib.util.spec_from_file_location("data_loader", folder / check["data_loader"])
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    feeds = list(loader.load_data())
    assert len(iterations) == len(feeds) and feeds[0]["clip"].shape == tuple(side["profile"]["clip"]["opt"])
    with OnnxRunner(built_onnx, threads=1, extensions=False) as runner:   # as Polygraphy runs it
        for feed, it in zip(feeds, iterations):
            ours = runner.infer(feed["clip"])
            for name in ("frame_score", "score_map"):
                np.testing.assert_allclose(np.asarray(it[name]), ours[name], rtol=1e-5, atol=1e-5)
