"""End to end on the shared checkpoint: training result, AUC floors against the baseline, report."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from m2s2l_deploy.errors import UserError
from m2s2l_deploy.report import metrics
from m2s2l_deploy.data import open_dataset
from m2s2l_deploy.model.checkpoint import load_checkpoint
from m2s2l_deploy.jobs.train import TrainData, TrainOptions, _batch, train

pytestmark = pytest.mark.slow


def test_checkpoint_records_contract_and_calibration(trained_run):
    ckpt = load_checkpoint(trained_run)
    assert ckpt.contract.fps == 10 and ckpt.contract.channels == 1 and ckpt.contract.clip_len == 5
    cal = ckpt.info["calibration"]
    assert cal["components"] == ["appearance", "motion", "quality", "speed", "background"]
    assert len(cal["component_std"]) == 5 and all(s > 0 for s in cal["component_std"])
    # the buffers in the weights are the calibration record
    np.testing.assert_allclose(ckpt.state["score_mean"].numpy(), cal["component_mean"], rtol=1e-6)
    assert ckpt.info["training"]["steps"] > 0 and ckpt.info["training"]["layout"] == "frames"
    # numba is a core dependency: CPU training ran the Numba scan form, and the summary says so
    assert ckpt.info["training"]["device"] == "cpu" and ckpt.info["training"]["scan_form"] == "numba"


def test_training_beats_the_untrained_model_and_the_baseline(eval_report, untrained_report):
    """Floors measured against the same pipeline with an untrained, calibrated model and against
    the frame-difference baseline on the same frames (both computed in this run, not typed in).

    The suite's checkpoint trains 190 steps (about 2 minutes); the issue's target (micro AUC >= 0.95 after <= 10
    CPU-minutes) is measured by the demo and recorded in the README, not asserted here.
    """
    r, u = eval_report, untrained_report
    # the untrained appearance head already draws the empty scene (its prior), so its error map is a
    # background subtraction with a high pixel AUC: training must still improve on it
    assert r["auc_pixel"] >= 0.9 and r["auc_pixel"] > u["auc_pixel"], (r["auc_pixel"], u["auc_pixel"])
    # the whole-frame granularity and the background component (which reads no weight) make the
    # untrained, calibrated score a frame-level background subtraction too, so what training adds
    # is judged on the learned components (appearance + motion, "combined"); the full score must
    # still beat the untrained one
    learned = r["ablation"]["combined"]["auc_micro"], u["ablation"]["combined"]["auc_micro"]
    assert learned[0] >= learned[1] + 0.1, learned
    assert r["auc_micro"] > u["auc_micro"], (r["auc_micro"], u["auc_micro"], r["auc_pixel"], u["auc_pixel"])
    assert r["auc_micro_causal"] >= r["baseline_auc_micro"] + 0.05, (r["auc_micro_causal"], r["baseline_auc_micro"])
    assert r["baseline_auc_micro"] == pytest.approx(u["baseline_auc_micro"])   # same frames, same baseline
    assert r["baseline_auc_micro"] <= 0.80          # the synthetic set is not trivially easy


def test_report_agrees_with_sklearn_directly(eval_report, scene_test):
    """The per-video AUCs are what scikit-learn gives on the same labels (independent recomputation)."""
    ds = open_dataset(scene_test)
    labels = {v.name: v.labels for v in ds.test}
    assert eval_report["n_frames"] == sum(len(l) for l in labels.values())
    clean = [v for v, l in labels.items() if l.sum() == 0]
    assert sorted(eval_report["skipped_single_class"]) == sorted(clean)
    aucs = [eval_report["per_video"][v]["auc"] for v in labels if v not in clean]
    assert eval_report["auc_macro"] == pytest.approx(np.mean(aucs))
    # baseline recomputed from raw frames, sklearn on the concatenation
    base = np.concatenate([metrics.minmax_per_video(metrics.frame_difference_scores(v.load())) for v in ds.test])
    y = np.concatenate([v.labels for v in ds.test])
    assert eval_report["baseline_auc_micro"] == pytest.approx(roc_auc_score(y, base))


def test_ablation_has_all_variants(eval_report):
    ab = eval_report["ablation"]
    assert set(ab) == {"appearance-only", "motion-only", "speed-only", "background-only", "combined", "quality-aware"}
    assert ab["quality-aware"]["auc_micro"] == pytest.approx(eval_report["auc_micro"])
    assert all(0.0 <= v["auc_micro"] <= 1.0 for v in ab.values())


def test_sped_up_batches_keep_the_next_real_frame_as_target():
    """Speed-head batches: history every k-th frame, target the frame right after the last history
    frame; a video too short for k gets the largest stride that fits (and its label says so)."""
    frames = [np.arange(30, dtype=np.float32).reshape(30, 1, 1, 1)]
    data = TrainData([(0, 0)], frames, [], {})
    strides = np.array([1, 2, 3, 3])
    clips = _batch(data, [(0, 0), (0, 5), (0, 25), (0, 0)], 5, strides)[:, :, 0, 0, 0].numpy()
    for clip, k in zip(clips, strides):
        np.testing.assert_array_equal(np.diff(clip[:-1]), k)      # history at stride k
        assert clip[-1] == clip[-2] + 1                            # the next real frame
    short = np.array([3])
    clip = _batch(TrainData([(0, 0)], [frames[0][:8]], [], {}), [(0, 0)], 5, short)[0, :, 0, 0, 0].numpy()
    assert short[0] == 2 and list(clip) == [0, 2, 4, 6, 7]


def test_fixed_steps_reproduce_the_same_weights(small_scene, tmp_path):
    """--steps is the reproducible budget the shared test checkpoint uses: two runs, same weights;
    another seed gives other weights (so the comparison can fail)."""
    runs = [train(small_scene, tmp_path / name, opts=TrainOptions(steps=3, batch=4, seed=seed), log=lambda *_: None)
            for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    assert [r["steps"] for r in runs] == [3, 3, 3]
    a, b, c = (load_checkpoint(tmp_path / n).state for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_continues_steps(small_scene, tmp_path):
    run = tmp_path / "run"
    first = train(small_scene, run, opts=TrainOptions(epochs=1, batch=4), log=lambda *_: None)
    second = train(small_scene, run, opts=TrainOptions(epochs=1, batch=4, resume=True), log=lambda *_: None)
    assert second["steps"] == 2 * first["steps"]
    assert json.loads((run / "train_state.json").read_text())["step"] == second["steps"]
    assert load_checkpoint(run).info["training"]["steps"] == second["steps"]


def test_clip_length_is_the_checkpoints_and_resume_keeps_it(small_scene, tmp_path):
    """A longer clip with a sparse history reaches the saved contract and config, the scored frames
    start after its history, and a resume with another length or without the sparse history is
    refused rather than mixing the two."""
    from m2s2l_deploy.contract import prepare_frames
    from m2s2l_deploy.jobs.clip_loop import score_prepared
    from m2s2l_deploy.runners import TorchRunner

    run = tmp_path / "run"
    train(small_scene, run, opts=TrainOptions(steps=2, batch=4, clip_len=7, sparse_history=True), log=lambda *_: None)
    ckpt = load_checkpoint(run)
    assert ckpt.contract.clip_len == 7 and ckpt.model_config.clip_len == 7
    assert ckpt.model_config.encoded_frames() == (0, 2, 4, 5)
    runner = TorchRunner(ckpt)
    video = open_dataset(small_scene).test[0]
    frames = video.load()
    scored = score_prepared(runner, prepare_frames(frames, runner.contract))
    assert scored.first_decidable == 6 and len(scored.frame_score) == len(frames)
    with pytest.raises(UserError, match="--clip-len 7"):
        train(small_scene, run, opts=TrainOptions(steps=1, batch=4, resume=True), log=lambda *_: None)
    with pytest.raises(UserError, match="with --sparse-history"):
        train(small_scene, run, opts=TrainOptions(steps=1, batch=4, clip_len=7, resume=True), log=lambda *_: None)
    assert json.loads((run / "train_state.json").read_text())["step"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_gives_a_cpu_loadable_checkpoint_scored_alike_on_both(small_scene, tmp_path):
    """`train --device cuda` (the parallel scan form with autograd) saves CPU tensors; the GPU and
    the CPU runner score the saved model alike."""
    from m2s2l_deploy.contract import prepare_frames
    from m2s2l_deploy.jobs.clip_loop import score_prepared
    from m2s2l_deploy.runners import TorchRunner

    summary = train(small_scene, tmp_path / "gpu", opts=TrainOptions(steps=3, batch=4, device="cuda"),
                    log=lambda *_: None)
    assert summary["device"] == torch.cuda.get_device_name(0) and summary["scan_form"] in ("parallel", "mamba_ssm")
    ckpt = load_checkpoint(tmp_path / "gpu")
    assert all(t.device.type == "cpu" for t in ckpt.state.values())
    video = open_dataset(small_scene).test[0]
    scores = {}
    for device in ("cpu", "cuda"):
        runner = TorchRunner(ckpt, device=device)
        scores[device] = score_prepared(runner, prepare_frames(video.load(), runner.contract)).frame_score
    np.testing.assert_allclose(scores["cuda"], scores["cpu"], rtol=1e-3, atol=1e-3)
