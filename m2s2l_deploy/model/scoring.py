"""The quality-aware anomaly score, in plain tensor ops so it runs inside every exported graph.

Per target frame (pixels in [-1, 1], so the PSNR peak-to-peak is 2):
- appearance error map  E_a = mean over channels of (pred_frame - target)^2
- motion error map      E_m = mean over channels of (pred_motion - (target - previous))^2
- quality map           Q   = (1 - SSIM_local(pred_frame, target)) / 2, 7x7 uniform windows: a
  structural estimate of how well the appearance was reproduced, insensitive to small brightness
  offsets that inflate E_a.
Each map is averaged over square patches (``window`` pixels, every ``stride`` pixels; 0 = window/2)
and the worst patch is taken, so a small anomalous object is not diluted by a large normal
background. With ``whole_frame`` (the presets) each component is the mean, in dB, of its worst
patch and its whole-frame average: two granularities of the same error, so that an object larger
than the window, or several anomalous objects at once, count fully, while a small one still
dominates its patch (docs/results.md: neutral on the synthetic development scenes, +0.04 micro AUC
on UCSD Ped2, where cyclists and carts are large). A stride well below the window brings the worst patch close to the worst of all
positions: with stride window/2, an object wider than half the window can straddle patches and
lose part of its error in each (README, Results: for `tiny`, window 10 / stride 2 replaced
12 / 6). Components:

    c = [-PSNR(worst E_a), -PSNR(worst E_m), -10*log10(1 - worst Q)]      (dB, higher = worse)

Models with a speed head add a 4th component, ``irregularity``: the worst granularity-2 token's
log-odds that the history plays faster than real time (an object moving at twice a walker's speed
looks like a walker seen at frame stride 2). Prediction error misses such an object when it looks
normal and its motion is smooth; the speed head is trained to tell strides apart on normal footage.

Models with ``score_background`` (the presets) add a last component, the still foreground
(``still_foreground``): the target's squared distance from the camera's empty scene (the appearance
head's prior, the training footage's median) where nothing in the clip moves nearby, pooled like
the error maps; differences below a noise floor (presets: 4 grey levels) do not count, so slow
changes of the light do not. A next-frame predictor forgets an object that arrived and stayed once
it is in the history; this component does not, and moving objects are gated out, so walkers do not
count.

The frame score standardises each component with its mean/std on held-out normal footage and
takes their weighted soft maximum (``combine``), weights (1, 1, 1) = "quality-aware"; ablations
zero some weights. The result is in units of normal-footage standard deviations: the causal score;
the paper protocol additionally min-max normalises it per video.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PEAK = 2.0
EPS = 1e-8
COMPONENTS = ("appearance", "motion", "quality")      # + "speed", "background" where the model has them
SOFT_MAX_TAU = 0.5  # default temperature of combine()'s soft maximum (std units); presets: config.SCORE_TAU
ABLATIONS = {
    "appearance-only": (1.0, 0.0, 0.0),
    "motion-only": (0.0, 1.0, 0.0),
    "combined": (1.0, 1.0, 0.0),
    "quality-aware": (1.0, 1.0, 1.0),
}


def component_names(speed: bool, background: bool) -> tuple[str, ...]:
    """The frame score's components, in the order the model stacks them."""
    return COMPONENTS + (("speed",) if speed else ()) + (("background",) if background else ())


def ablations(names: tuple[str, ...] | int) -> dict[str, tuple[float, ...]]:
    """Weights of each score variant for a model with the components ``names`` (an int: a
    checkpoint that does not record them, 3 = no speed head, 4 = speed head); the last,
    "quality-aware", is the frame score's own (all ones)."""
    if isinstance(names, int):
        names = component_names(speed=names == 4, background=False)
    pad = (0.0,) * (len(names) - 3)
    out = {name: w + pad for name, w in ABLATIONS.items() if name != "quality-aware"}
    for i, extra in enumerate(names[3:], 3):
        out[f"{extra}-only"] = tuple(1.0 if j == i else 0.0 for j in range(len(names)))
    out["quality-aware"] = (1.0,) * len(names)
    return out


def error_maps(pred_frame, target, pred_motion, motion):
    """(B, C, H, W) inputs -> appearance and motion squared-error maps, each (B, 1, H, W)."""
    e_app = (pred_frame - target).pow(2).mean(dim=1, keepdim=True)
    e_mot = (pred_motion - motion).pow(2).mean(dim=1, keepdim=True)
    return e_app, e_mot


def ssim_dissimilarity(x, y, window: int = 7):
    """(1 - local SSIM) / 2 between two (B, C, H, W) images in [-1, 1], averaged over channels."""
    c1, c2 = (0.01 * PEAK) ** 2, (0.03 * PEAK) ** 2
    pad = window // 2

    def pool(t):
        return F.avg_pool2d(t, window, stride=1, padding=pad, count_include_pad=False)

    mx, my = pool(x), pool(y)
    vx = pool(x * x) - mx * mx
    vy = pool(y * y) - my * my
    cxy = pool(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return ((1 - ssim) / 2).mean(dim=1, keepdim=True)


def worst_patch(err_map, window: int, stride: int = 0):
    """Mean of the map over window x window patches every ``stride`` pixels (0: window/2), maximum over patches: (B,)."""
    pooled = F.avg_pool2d(err_map, window, stride=stride or max(1, window // 2))
    return pooled.flatten(1).amax(dim=1)


def psnr(mse):
    return 10.0 * torch.log10(PEAK * PEAK / (mse + EPS))


def whole_frame(err_map):
    """Mean of the map over the whole frame: (B,)."""
    return err_map.mean(dim=(1, 2, 3))


def error_db(mse):
    """A mean squared error in dB, higher = worse (minus its PSNR)."""
    return -psnr(mse)


def pooled_db(err_map, window: int, stride: int = 0, whole_frame_too: bool = False, to_db=error_db):
    """(B, 1, H, W) map -> (B,) in dB: its worst patch, or (``whole_frame_too``) the mean of its
    worst patch and its whole-frame average."""
    worst = to_db(worst_patch(err_map, window, stride))
    return (worst + to_db(whole_frame(err_map))) / 2 if whole_frame_too else worst


def components(pred_frame, target, pred_motion, motion, window: int, stride: int = 0,
               whole_frame_too: bool = False):
    """(B, 3) score components in dB, in the order of COMPONENTS, and the two error maps.

    ``whole_frame_too``: each component is the mean of its worst-patch and whole-frame values (dB)."""
    e_app, e_mot = error_maps(pred_frame, target, pred_motion, motion)
    q = ssim_dissimilarity(pred_frame, target)

    def quality_db(x):
        return 10.0 * torch.log10(1.0 / (1.0 - x.clamp(max=1.0 - 1e-6)))
    comps = [pooled_db(e, window, stride, whole_frame_too) for e in (e_app, e_mot)]
    comps.append(pooled_db(q, window, stride, whole_frame_too, quality_db))
    return torch.stack(comps, dim=1), e_app, e_mot


STILL_SPREAD = 5      # pixels: motion this close to a pixel counts as motion at it
STILL_TAU = 0.15      # mean absolute frame difference (pixels in [-1, 1]) at which a pixel stops being still


def still_foreground(clip, background, spread: int = STILL_SPREAD, tau: float = STILL_TAU,
                     floor: float = 0.0):
    """(B, T, C, H, W) clip and the empty scene (C, H, W) -> (B, 1, H, W): the target's squared
    difference from the empty scene beyond ``floor``, kept only where nothing moved in the clip nearby.

    Why: a next-frame predictor reproduces an object that arrived and stayed (a parked crate, a
    dropped bag) as soon as it is in the history, so prediction error forgets it after a few frames;
    this map remembers what the scene looks like when empty. Stillness is gated softly: 1 where the
    largest frame-to-frame change within ``spread`` pixels is 0, falling to 0 at ``tau``, so the
    uniform inside of a slow walker, whose edges move, does not count as a parked object. The
    ``floor`` (per pixel and channel, in [-1, 1] units) absorbs slow changes of the light, which
    move the scene by a few grey levels, where a parked object differs by tens."""
    moved = (clip[:, 1:] - clip[:, :-1]).abs().mean(dim=2).amax(dim=1, keepdim=True)
    moved = F.max_pool2d(moved, spread, stride=1, padding=spread // 2)
    still = (1.0 - moved / tau).clamp(min=0.0)
    beyond = ((clip[:, -1] - background).abs() - floor).clamp(min=0.0)
    return beyond.pow(2).mean(dim=1, keepdim=True) * still


def combine(comps, mean, std, weights, tau: float = SOFT_MAX_TAU):
    """Standardise components with normal-footage statistics, then take their weighted soft maximum.

    score = m + tau * log(sum_i w_i exp((z_i - m) / tau) / sum_i w_i), m = max of the z_i with w_i > 0.

    Why a soft maximum, not a sum: an anomaly usually breaks one expectation (a parked crate looks
    wrong but does not move; a cyclist looks almost normal but moves too fast), and a sum adds the
    other components' normal-footage noise to that one clear signal. The result lies within
    tau * log(sum w / max w) below the largest active component; zero weights drop a component
    (the ablations). The temperature says how soft: 0.5 (checkpoints before the presets' own) is
    nearly the maximum; the presets' 4 leans towards the mean, because on a new camera's normal
    footage a single component can sit several deviations high and would decide the score alone
    (docs/results.md). Works on (B, K) torch tensors; plain ops only, so it runs inside every graph.
    """
    z = (comps - mean) / std
    active = weights > 0
    z = torch.where(active, z, torch.full_like(z, -1e4))
    m = z.amax(dim=1, keepdim=True)
    mix = (weights * torch.exp((z - m) / tau)).sum(dim=1) / weights.sum()
    return m[:, 0] + tau * torch.log(mix)


def score_map(e_app, e_mot, map_scale):
    """Pixel anomaly map (B, 1, H, W): each error map divided by its typical value on normal footage."""
    return e_app / map_scale[0] + e_mot / map_scale[1]


def irregularity(speed_logits):
    """(B, h, w, K) stride logits -> (B,): the worst token's log-odds of a stride above 1."""
    odds = torch.logsumexp(speed_logits[..., 1:], dim=-1) - speed_logits[..., 0]
    return odds.flatten(1).amax(dim=1)
