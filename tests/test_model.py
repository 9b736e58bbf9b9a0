"""Model shapes, presets, FLOP report, scan-form equivalence inside the model, decomposition loss."""

import pytest
import torch

from m2s2l_deploy.ops import scan
from m2s2l_deploy.errors import UserError
from m2s2l_deploy.model import M2S2L, OUTPUT_NAMES, decorrelation_loss, preset_config, preset_names
from m2s2l_deploy.model.config import ModelConfig
from m2s2l_deploy.model.flops import model_info
from m2s2l_deploy.model.layers import SS2D


def _clip(cfg, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, cfg.clip_len, cfg.in_channels, cfg.height, cfg.width, generator=g) * 2 - 1


@pytest.mark.parametrize("channels", [1, 3])
def test_outputs_and_shapes(channels):
    cfg = preset_config("tiny", in_channels=channels)
    model = M2S2L(cfg).eval()
    with torch.no_grad():
        outs = model(_clip(cfg))
    shapes = dict(zip(OUTPUT_NAMES, (tuple(o.shape) for o in outs)))
    hw = (cfg.height, cfg.width)
    assert shapes == {"score_map": (1, 1, *hw), "pred_frame": (1, channels, *hw),
                      "pred_motion": (1, channels, *hw), "frame_score": (1,)}
    assert all(torch.isfinite(o).all() for o in outs)


def test_every_preset_builds_and_uses_three_granularities():
    for name in preset_names():
        cfg = preset_config(name)
        assert len(cfg.dims) == 3 and len(cfg.temporal_scales) >= 2
        M2S2L(cfg)
    with pytest.raises(UserError):
        preset_config("huge")
    with pytest.raises(UserError):
        preset_config("tiny", height=60)


@pytest.mark.parametrize("predict", [True, False])
def test_predictions_see_the_target_only_when_not_predicting(predict):
    """Predict mode (the presets): the heads' outputs do not depend on the target frame, while the
    score does (it compares them with it); the older reconstruction mode reads the target."""
    cfg = preset_config("tiny", predict=predict)
    assert preset_config("tiny").predict
    older = {k: v for k, v in preset_config("tiny").to_dict().items() if k != "predict"}
    assert not ModelConfig.from_dict(older).predict          # checkpoints written before it reconstruct
    model = M2S2L(cfg).eval()
    clip = _clip(cfg)
    other = clip.clone()
    other[:, -1] = -other[:, -1]
    with torch.no_grad():
        a, b = model(clip), model(other)
    same_pred = all(torch.equal(a[i], b[i]) for i in (1, 2))       # pred_frame, pred_motion
    assert same_pred == predict
    assert not torch.equal(a[3], b[3])                               # frame_score


def test_sparse_history_encodes_the_frames_it_names_and_ignores_the_rest():
    """A sparse history encodes the two frames before the target and every second one before those;
    a frame it skips changes no prediction, a frame it encodes does. Checkpoints saved before the
    setting encode their whole history."""
    assert not preset_config("tiny").sparse_history
    cfg = preset_config("tiny", clip_len=7, sparse_history=True)
    assert cfg.encoded_frames() == (0, 2, 4, 5)
    assert preset_config("tiny", clip_len=5, sparse_history=True).encoded_frames() == (0, 2, 3)
    assert preset_config("tiny", clip_len=7).encoded_frames() == (0, 1, 2, 3, 4, 5)
    assert preset_config("tiny", clip_len=7, sparse_history=True, predict=False).encoded_frames() == tuple(range(7))
    older = {k: v for k, v in cfg.to_dict().items() if k != "sparse_history"}
    assert not ModelConfig.from_dict(older).sparse_history
    model = M2S2L(cfg).eval()
    clip = _clip(cfg)
    with torch.no_grad():
        base = model(clip)
        for k in range(cfg.clip_len - 1):
            other = clip.clone()
            other[:, k] = -other[:, k]
            out = model(other)
            same_pred = all(torch.equal(base[i], out[i]) for i in (1, 2))   # pred_frame, pred_motion
            assert same_pred == (k not in cfg.encoded_frames()), k


def test_speed_head_adds_the_odds_of_a_faster_stride():
    """The 4th component is the worst token's log(P(stride > 1) / P(stride 1)), from softmax probabilities."""
    from m2s2l_deploy.model import scoring
    cfg = preset_config("tiny")
    assert cfg.speed_classes == 3 and not preset_config("tiny", speed_classes=0).speed_classes
    model = M2S2L(cfg).eval()
    with torch.no_grad():
        out = model.outputs(_clip(cfg, batch=2))
    logits = out["streams"]["speed_logits"].double()
    assert logits.shape == (2, cfg.height // (2 * cfg.patch), cfg.width // (2 * cfg.patch), 3)
    p = torch.softmax(logits, dim=-1)
    odds = torch.log((1 - p[..., 0]) / p[..., 0]).flatten(1).amax(dim=1)
    speed = model.component_names.index("speed")
    assert speed == 3 and out["components"].shape == (2, len(model.component_names))
    torch.testing.assert_close(out["components"][:, speed].double(), odds, rtol=1e-4, atol=1e-4)
    assert list(scoring.ablations(4))[-1] == "quality-aware" and scoring.ablations(4)["quality-aware"] == (1.0,) * 4
    assert len(M2S2L(preset_config("tiny", speed_classes=0, score_background=False)).score_mean) == 3
    with pytest.raises(UserError):
        preset_config("tiny", speed_classes=1)


def test_model_scan_forms_agree():
    """The model gives the same outputs whichever scan form runs inside it."""
    cfg = preset_config("tiny")
    model = M2S2L(cfg).eval()
    clip = _clip(cfg)
    outs = {}
    for form in ("ref", "parallel", "cpu"):
        with torch.no_grad():
            outs[form] = model.use_scan_form(form)(clip)
    model.use_scan_form(None)
    ref = outs["ref"]
    for name, out in outs.items():
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_ss2d_sees_all_four_directions():
    """A change at the first token reaches the last one (row scan) and tokens only a reversed scan reaches."""
    torch.manual_seed(0)
    layer = SS2D(8, d_state=4, expand=1).eval()
    x = torch.randn(1, 4, 4, 8)
    x2 = x.clone()
    x2[0, 3, 3] += 1.0                      # last token in row-major order
    with torch.no_grad():
        d = (layer(x2) - layer(x)).abs().sum(-1)[0]
    assert d[0, 0] > 0                       # only the reversed scans carry it back to the first token
    assert (d > 0).all()


def test_info_flops_paper_preset_within_budget():
    r = model_info(preset_config("paper"))
    assert r["gflops_per_clip"] <= 20.1
    assert r["gflops_scan"] > 0 and r["gflops_dense"] > 0
    # scan FLOPs come from the formula over every recorded call
    tiny = model_info(preset_config("tiny"))
    assert tiny["scan_calls"] == 3 * 1 + 2 * 2       # one SS2D per tiny stage + 2 temporal scales x 2 granularities


def test_scan_flops_formula():
    assert scan.scan_flops(1, 1, 1, 1, with_z=False, with_d=False) == 8
    assert scan.scan_flops(2, 3, 4, 5, with_z=True, with_d=True) == 8 * 2 * 3 * 4 * 5 + 2 * 3 * 5 * 7


def test_decorrelation_loss_bounds():
    a = torch.randn(2, 3, 3, 8)
    same = {"app": a, "mot": a, "app_skip": a, "mot_skip": a}
    assert decorrelation_loss(same).item() == pytest.approx(1.0, abs=1e-5)
    e1 = torch.zeros(2, 3, 3, 8); e1[..., 0] = 1
    e2 = torch.zeros(2, 3, 3, 8); e2[..., 1] = 1
    ortho = {"app": e1, "mot": e2, "app_skip": e1, "mot_skip": e2}
    assert decorrelation_loss(ortho).item() == pytest.approx(0.0, abs=1e-6)


def test_temporal_mamba_reads_only_its_strided_frames():
    """Stride 3 over 8 frames reads frames 1, 4, 7 (ending at the target): other frames change nothing."""
    from m2s2l_deploy.model.layers import TemporalMamba
    torch.manual_seed(0)
    tm = TemporalMamba(8, 4, 2, stride=3).eval()
    tokens = torch.randn(5, 8, 8)
    with torch.no_grad():
        base = tm(tokens)
        for frame, used in [(0, False), (1, True), (2, False), (3, False), (4, True), (6, False), (7, True)]:
            moved = tokens.clone()
            moved[:, frame] += 1.0
            changed = not torch.allclose(tm(moved), base)
            assert changed == used, (frame, used)


def test_cuda_causal_conv_matches_the_conv1d_node():
    """The two-multiply-add causal conv used on CUDA equals the Conv1d path (CPU, ONNX, INT8)."""
    from m2s2l_deploy.model.layers import TemporalMamba, causal_depthwise_conv2
    torch.manual_seed(0)
    tm = TemporalMamba(8, 4, 2, stride=1)
    for steps in (1, 2, 9):
        x = torch.randn(3, steps, tm.inner)
        with torch.no_grad():
            torch.testing.assert_close(causal_depthwise_conv2(x, tm.conv.weight, tm.conv.bias), tm._causal_conv(x),
                                       rtol=1e-6, atol=1e-6)
