"""The in-graph score against independent NumPy/SciPy computations."""

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter

from m2s2l_deploy.model import scoring


def test_worst_patch_psnr_matches_numpy():
    rng = np.random.default_rng(0)
    err = rng.random((2, 1, 16, 16)).astype(np.float32)
    err[1, 0, 8:12, 4:8] += 5.0                       # a hot spot
    got = scoring.worst_patch(torch.from_numpy(err), 4).numpy()
    expect = []
    for b in range(2):
        best = max(err[b, 0, i:i + 4, j:j + 4].mean() for i in range(0, 13, 2) for j in range(0, 13, 2))
        expect.append(best)
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    got = scoring.worst_patch(torch.from_numpy(err), 4, stride=1).numpy()      # an explicit stride
    expect = [max(err[b, 0, i:i + 4, j:j + 4].mean() for i in range(13) for j in range(13)) for b in range(2)]
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    psnr = scoring.psnr(torch.tensor([0.04])).item()
    assert psnr == pytest.approx(10 * np.log10(4 / 0.04), rel=1e-5)


def test_ssim_dissimilarity_against_scipy_interior():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (1, 1, 24, 24)).astype(np.float64)
    y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1)
    got = scoring.ssim_dissimilarity(torch.from_numpy(x).float(), torch.from_numpy(y).float(), 7).numpy()[0, 0]
    f = lambda a: uniform_filter(a, 7)                # same 7x7 uniform window (interior only)
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    a, b = x[0, 0], y[0, 0]
    mx, my = f(a), f(b)
    vx, vy, cxy = f(a * a) - mx ** 2, f(b * b) - my ** 2, f(a * b) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    np.testing.assert_allclose(got[3:-3, 3:-3], ((1 - ssim) / 2)[3:-3, 3:-3], rtol=1e-4, atol=1e-5)
    same = scoring.ssim_dissimilarity(torch.from_numpy(x).float(), torch.from_numpy(x).float())
    assert same.abs().max().item() < 1e-5


def test_components_rank_a_visible_object_higher():
    """A blob the prediction misses raises every component relative to a clean prediction."""
    torch.manual_seed(0)
    target = torch.rand(1, 1, 32, 32) * 0.2 - 0.5
    prev = target.clone()
    good = target + 0.01 * torch.randn_like(target)
    bad = good.clone()
    bad[..., 10:16, 10:16] = 0.9
    motion = target - prev
    c_good, *_ = scoring.components(good, target, motion, motion, 8)
    c_bad, *_ = scoring.components(bad, target, motion + 0.0, motion, 8)
    assert (c_bad[0, 0] > c_good[0, 0]) and (c_bad[0, 2] > c_good[0, 2])


@pytest.mark.parametrize("tau", [scoring.SOFT_MAX_TAU, 4.0])
def test_combine_standardises_and_takes_a_soft_maximum(tau):
    comps = torch.tensor([[3.0, 5.0, 7.0], [3.0, 13.0, -5.0]])
    mean, std = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([2.0, 4.0, 6.0])
    z = ((comps - mean) / std).double().numpy()          # [[1, 1, 1], [1, 3, -1]]
    got = scoring.combine(comps, mean, std, torch.ones(3), tau).double().numpy()
    # independent form: tau * log(mean(exp(z / tau))), via scipy's stable logsumexp
    from scipy.special import logsumexp
    want = tau * (logsumexp(z / tau, axis=1) - np.log(3))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[0] == pytest.approx(1.0, rel=1e-5)           # equal components: that value
    assert z[1].max() - tau * np.log(3) <= got[1] <= z[1].max()
    # zero weights drop a component, however large it is
    only_app = scoring.combine(comps, mean, std, torch.tensor([1.0, 0, 0]), tau)
    np.testing.assert_allclose(only_app.numpy(), z[:, 0], rtol=1e-6)
    huge = scoring.combine(torch.tensor([[3.0, 1e6, 7.0]]), mean, std, torch.tensor([1.0, 0, 1.0]), tau)
    assert torch.isfinite(huge).all() and huge.item() <= 1.0 + 1e-5


def test_score_stride_defaults_to_half_the_window_for_older_checkpoints():
    """A config saved before score_stride existed keeps its old score (stride = window/2); tiny uses 10 / 2."""
    from m2s2l_deploy.model.config import ModelConfig, preset_config

    tiny = preset_config("tiny")
    assert (tiny.score_window, tiny.score_stride) == (10, 2)
    old = {k: v for k, v in tiny.to_dict().items() if k != "score_stride"} | {"score_window": 12}
    cfg = ModelConfig.from_dict(old)
    assert cfg.score_stride == 0
    err = torch.rand(1, 1, 24, 24)
    assert scoring.worst_patch(err, 12, cfg.score_stride) == scoring.worst_patch(err, 12, 6)


def test_whole_frame_components_against_numpy():
    """With score_whole_frame (the presets) each component is the mean (dB) of its worst patch and its
    whole-frame average; configs saved before it keep the worst patch alone."""
    from m2s2l_deploy.model.config import ModelConfig, preset_config

    rng = np.random.default_rng(3)
    target = rng.uniform(-1, 1, (2, 1, 20, 24)).astype(np.float32)
    pred = (target + rng.normal(0, 0.05, target.shape)).astype(np.float32)
    pred[1, 0, 4:12, 6:14] = 0.9                          # an object the prediction missed
    motion = rng.normal(0, 0.1, target.shape).astype(np.float32)
    pred_motion = (motion + rng.normal(0, 0.02, target.shape)).astype(np.float32)
    t = {k: torch.from_numpy(v) for k, v in dict(p=pred, t=target, pm=pred_motion, m=motion).items()}
    got, *_ = scoring.components(t["p"], t["t"], t["pm"], t["m"], 6, 2, whole_frame_too=True)
    worst_only, *_ = scoring.components(t["p"], t["t"], t["pm"], t["m"], 6, 2)

    q = scoring.ssim_dissimilarity(t["p"], t["t"]).numpy()   # checked against SciPy above

    def worst(m):                                         # every 6x6 patch at stride 2, in NumPy
        h, w = m.shape
        return max(m[i:i + 6, j:j + 6].mean() for i in range(0, h - 5, 2) for j in range(0, w - 5, 2))

    for b in range(2):
        e_app = ((pred[b] - target[b]) ** 2).mean(0)
        e_mot = ((pred_motion[b] - motion[b]) ** 2).mean(0)
        err_db = lambda x: 10 * np.log10((x + 1e-8) / 4.0)              # -PSNR, peak-to-peak 2
        q_db = lambda x: -10 * np.log10(1 - x)
        want_worst = [err_db(worst(e_app)), err_db(worst(e_mot)), q_db(worst(q[b, 0]))]
        want_frame = [err_db(e_app.mean()), err_db(e_mot.mean()), q_db(q[b, 0].mean())]
        np.testing.assert_allclose(worst_only[b].numpy(), want_worst, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got[b].numpy(), (np.array(want_worst) + want_frame) / 2, rtol=1e-4, atol=1e-4)
    assert preset_config("tiny").score_whole_frame and preset_config("paper").score_whole_frame
    old = {k: v for k, v in preset_config("tiny").to_dict().items() if k != "score_whole_frame"}
    assert ModelConfig.from_dict(old).score_whole_frame is False


@pytest.mark.parametrize("floor", [0.0, 0.05])
def test_still_foreground_against_numpy(floor):
    """The background component's map: the target's distance from the empty scene beyond the noise
    floor, squared, kept where the clip's largest frame-to-frame change within ``spread`` pixels
    stays below ``tau`` (a NumPy loop); a parked object lights up, a moving one does not."""
    rng = np.random.default_rng(4)
    t, h, w, spread, tau = 5, 20, 24, 5, 0.1
    bg = rng.uniform(-0.5, 0.5, (1, h, w))
    clip = np.repeat(bg[None], t, axis=0) + rng.normal(0, 0.005, (t, 1, h, w))
    clip[:, :, 3:8, 3:9] = 0.9                                  # parked before the clip began
    for i in range(t):                                          # a walker, 2 px per frame
        clip[i, :, 12:17, 2 + 2 * i:7 + 2 * i] = -0.9
    got = scoring.still_foreground(torch.from_numpy(clip[None]).float(), torch.from_numpy(bg).float(),
                                   spread, tau, floor).numpy()[0, 0]
    change = np.abs(np.diff(clip, axis=0)).mean(axis=1).max(axis=0)       # (h, w)
    r = spread // 2
    moved = np.array([[change[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].max() for x in range(w)]
                      for y in range(h)])
    beyond = np.maximum(np.abs(clip[-1] - bg) - floor, 0)
    want = (beyond ** 2).mean(axis=0) * np.clip(1 - moved / tau, 0, None)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    parked = (np.maximum(np.abs(0.9 - bg[0, 3:8, 3:9]) - floor, 0) ** 2).mean()
    assert got[4:7, 4:8].mean() > 0.8 * parked                  # the parked object counts in full
    assert got[12:17, 10:15].max() < 1e-3 < parked              # the walker's inside does not


def test_still_foreground_floor_absorbs_a_lighting_drift():
    """The presets' noise floor: the whole scene 3 grey levels brighter (the light's drift) adds
    nothing, while without the floor it lights up every still pixel; a parked crate still counts."""
    from m2s2l_deploy.model.config import BACKGROUND_FLOOR

    rng = np.random.default_rng(6)
    bg = torch.from_numpy(rng.uniform(-0.5, 0.5, (1, 32, 40)).astype(np.float32))
    clip = (bg + 3 / 127.5).expand(1, 5, 1, 32, 40).clone()
    assert scoring.still_foreground(clip, bg, floor=BACKGROUND_FLOOR).max() == 0
    assert scoring.still_foreground(clip, bg).min() > 0.9 * (3 / 127.5) ** 2
    clip[..., 8:20, 10:26] = 0.9                                  # a crate, parked before the clip
    crate = scoring.still_foreground(clip, bg, floor=BACKGROUND_FLOOR)[0, 0, 9:19, 11:25]
    want = ((0.9 - bg[0, 9:19, 11:25]).abs() - BACKGROUND_FLOOR).clamp(min=0).pow(2)
    torch.testing.assert_close(crate, want)


def test_background_component_in_the_presets():
    """The presets add a 5th component, the still foreground against the model's empty scene, pooled
    like the others; configs saved before it have no such component."""
    from m2s2l_deploy.model.config import ModelConfig, preset_config
    from m2s2l_deploy.model.m2s2l import M2S2L

    cfg = preset_config("tiny")
    assert cfg.score_background and preset_config("paper").score_background
    model = M2S2L(cfg).eval()
    rng = np.random.default_rng(5)
    background = torch.from_numpy(rng.uniform(-0.6, 0.6, (1, cfg.height, cfg.width)).astype(np.float32))
    model.set_appearance_prior(background)
    clip = background.expand(2, cfg.clip_len, 1, cfg.height, cfg.width).clone()
    clip[1, :, :, 40:56, 60:80] = 0.95                           # a crate that stays, in video 1 only
    with torch.no_grad():
        comps = model.outputs(clip)["components"]
    assert model.component_names == ("appearance", "motion", "quality", "speed", "background")
    assert comps.shape == (2, 5)
    assert cfg.background_floor > 0 and preset_config("paper").background_floor == cfg.background_floor
    still = scoring.still_foreground(clip, background, floor=cfg.background_floor)   # checked against NumPy above
    want = scoring.pooled_db(still, cfg.score_window, cfg.score_stride, cfg.score_whole_frame)
    torch.testing.assert_close(comps[:, 4], want, rtol=1e-4, atol=1e-3)
    assert comps[1, 4] > comps[0, 4] + 20                         # dB: the crate against the empty scene
    names = scoring.ablations(model.component_names)
    assert names["background-only"] == (0, 0, 0, 0, 1) and names["speed-only"] == (0, 0, 0, 1, 0)
    assert names["quality-aware"] == (1,) * 5 and list(names)[-1] == "quality-aware"
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("score_background", "background_floor")}
    assert ModelConfig.from_dict(old).score_background is False
    assert ModelConfig.from_dict(old).background_floor == 0.0      # checkpoints saved before the floor
    assert len(M2S2L(ModelConfig.from_dict(old)).score_mean) == 4


def test_presets_fuse_with_their_own_temperature():
    """The presets fuse at config.SCORE_TAU, inside the model's own frame score (so every exported
    graph carries it) and in training's calibration; configs saved before it keep 0.5."""
    from m2s2l_deploy.model.config import SCORE_TAU, ModelConfig, preset_config
    from m2s2l_deploy.model.m2s2l import M2S2L

    cfg = preset_config("tiny")
    assert cfg.score_tau == SCORE_TAU == preset_config("paper").score_tau != scoring.SOFT_MAX_TAU
    old = {k: v for k, v in cfg.to_dict().items() if k != "score_tau"}
    assert ModelConfig.from_dict(old).score_tau == scoring.SOFT_MAX_TAU
    model = M2S2L(cfg).eval()
    with torch.no_grad():
        model.score_std.copy_(torch.linspace(0.5, 2.0, len(model.score_std)))
        out = model.outputs(torch.rand(2, cfg.clip_len, 1, cfg.height, cfg.width) * 2 - 1)
    want = scoring.combine(out["components"], model.score_mean, model.score_std, model.score_weights, SCORE_TAU)
    torch.testing.assert_close(out["frame_score"], want)
    at_half = scoring.combine(out["components"], model.score_mean, model.score_std, model.score_weights, 0.5)
    assert not torch.allclose(out["frame_score"], at_half)
