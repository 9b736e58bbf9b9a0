"""Shared fixtures: one synthetic train/test pair and ONE trained tiny checkpoint per test run.

The checkpoint is cached under .cache/ keyed by a hash of the source files that decide training
(model, scan, scoring, data, training loop) and the training options, so a developer re-running
tests reuses it while a change to any of those retrains; editing the exporter or the CLI does not.
Concurrent pytest processes share one build through a file lock. CI starts from a clean clone and
trains it once for a fixed number of optimiser steps (M2S2L_TEST_TRAIN_STEPS, default 190, about
2 minutes on 2 cores with the Numba scan form), not for a wall-clock budget: the same code then
gives the same checkpoint in CI as on the developer's machine, so a test that passed locally sees
the same model there.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "tests"
TRAIN_STEPS = int(os.environ.get("M2S2L_TEST_TRAIN_STEPS", "190"))
VTEST = ROOT.parent / "shared" / "data" / "vtest.avi"


# Source that decides the synthetic scenes and the trained checkpoint (globs under m2s2l_deploy/).
# The data modules are the ones training reads through (live sources and bench's stream reader are not).
TRAINING_SOURCES = ("__init__.py", "contract.py", "jobs/clip_loop.py", "ops/scan.py", "jobs/train.py",
                    "data/__init__.py", "data/readers.py", "data/video.py", "data/synth.py", "model/*.py",
                    "ops/kernels/scan_numba.py", "runners/base.py", "runners/torch_runner.py")


def _source_hash(*extra) -> str:
    h = hashlib.sha256()
    pkg = ROOT / "m2s2l_deploy"
    for path in sorted({p for pattern in TRAINING_SOURCES for p in pkg.glob(pattern)}):
        h.update(path.relative_to(ROOT).as_posix().encode())
        h.update(path.read_bytes())
    for e in extra:
        h.update(repr(e).encode())
    return h.hexdigest()[:16]


def _cached(name: str, key: str, build) -> Path:
    """Build into a temp folder and rename, so an interrupted run never leaves a half cache."""
    final = CACHE / f"{name}-{key}"
    if final.exists():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pytest may be building the same thing
        if final.exists():
            return final
        for old in CACHE.glob(f"{name}-*"):
            shutil.rmtree(old, ignore_errors=True)
        tmp = CACHE / f".{name}-{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        tmp.rename(final)
    return final


@pytest.fixture(scope="session")
def scene_train() -> Path:
    """Default synthetic scene, seed 0 (training set of the shared checkpoint)."""
    from m2s2l_deploy.data.synth import generate_scene
    return _cached("scene-seed0", _source_hash("scene", 0), lambda p: generate_scene(p / "data", seed=0)) / "data"


@pytest.fixture(scope="session")
def scene_test() -> Path:
    """Same scene layout, seed 1: unseen pedestrians and anomalies for evaluation."""
    from m2s2l_deploy.data.synth import generate_scene
    return _cached("scene-seed1", _source_hash("scene", 1), lambda p: generate_scene(p / "data", seed=1)) / "data"


@pytest.fixture(scope="session")
def trained_run(scene_train) -> Path:
    from m2s2l_deploy.jobs.train import TrainOptions, train

    opts = TrainOptions(preset="tiny", steps=TRAIN_STEPS, seed=0)
    key = _source_hash("train-steps", TRAIN_STEPS)
    return _cached("run", key, lambda p: train(scene_train, p / "run", opts=opts, log=lambda *_: None)) / "run"


@pytest.fixture(scope="session")
def eval_report(trained_run, scene_test) -> dict:
    from m2s2l_deploy.jobs.evaluate import evaluate
    from m2s2l_deploy.runners import TorchRunner

    return evaluate(TorchRunner(trained_run, extras=True), scene_test, smooth_sigma=3.0, log=lambda *_: None)


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory) -> Path:
    """A very small synthetic set for quick CLI/training-mechanics tests."""
    from m2s2l_deploy.data.synth import generate_scene
    out = tmp_path_factory.mktemp("small") / "scene"
    generate_scene(out, seed=3, size=(64, 64), n_train=2, n_test=2, train_frames=24, test_frames=24)
    return out


@pytest.fixture(scope="session")
def untrained_report(scene_train, scene_test, tmp_path_factory) -> dict:
    """The same pipeline with an untrained (but calibrated) model: the bar training must clear."""
    import torch

    from m2s2l_deploy.jobs.evaluate import evaluate
    from m2s2l_deploy.model import M2S2L
    from m2s2l_deploy.model.checkpoint import save_checkpoint
    from m2s2l_deploy.runners import TorchRunner
    from m2s2l_deploy.jobs.train import calibrate, load_training_data

    data, contract = load_training_data(scene_train, "auto", {"clip_len": 5}, "tiny", "auto", log=lambda *_: None)
    from m2s2l_deploy.model import preset_config
    torch.manual_seed(0)
    model = M2S2L(preset_config("tiny", in_channels=contract.channels))
    cal = calibrate(model, contract, data.calibration, 0.995)
    run = tmp_path_factory.mktemp("untrained") / "run"
    save_checkpoint(run, model, contract, {"calibration": cal})
    return evaluate(TorchRunner(run, extras=True), scene_test, log=lambda *_: None)


# -- real footage as the live tests serve it (tests/test_sources.py, tests/test_watch.py) ----------------
@pytest.fixture(scope="session")
def vtest_frames():
    from m2s2l_deploy.data.video import read_video
    if not VTEST.exists():
        pytest.skip(f"real footage {VTEST} not present")
    frames, fps = read_video(VTEST, max_frames=150)
    assert fps == 10.0
    return frames


@pytest.fixture(scope="session")
def jpeg_parts(vtest_frames):
    """vtest as the test camera sends it (JPEG bytes) and as a client decodes them."""
    import cv2
    import numpy as np
    parts = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes() for f in vtest_frames]
    decoded = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) for p in parts]
    return parts, decoded


@pytest.fixture(scope="session")
def png_folder(vtest_frames, tmp_path_factory):
    """The first 14 frames of vtest.avi as lossless PNG files, named so that only a natural sort plays them in order."""
    import cv2
    d = tmp_path_factory.mktemp("frames") / "cam"
    d.mkdir()
    for i, f in enumerate(vtest_frames[:14]):
        cv2.imwrite(str(d / f"frame{i}.png"), f)
    return d
