"""M2S2L: multi-scale spatial-temporal Mamba video anomaly detector (built from the paper's abstract).

clip (B, T, C, H, W) in [-1, 1]: frames 0..T-2 are history, frame T-1 is the target. The presets
encode the history only (``ModelConfig.predict``): the heads predict a target they never see, as
future-frame prediction does; checkpoints written before it encode the target too. With
``ModelConfig.sparse_history`` the older history frames are encoded at stride 2.

1. Hierarchical spatial encoder, shared by all frames: patch embedding then SS2D blocks at three
   granularities (strides patch, 2*patch, 4*patch).
2. Multi-temporal encoders at granularities 2 and 3: Mamba along time per token at strides 1 and 2.
3. Feature decomposition: two projections split the fused features into an appearance stream and
   a motion stream; their squared cosine similarity is the decorrelation loss.
4. Decoders: the appearance head predicts the target frame, the motion head its frame
   difference to the previous frame, each from its own stream (coarse features plus a narrow
   granularity-2 skip, so the heads cannot copy unseen content through a full-resolution path).
   The appearance head predicts on top of the camera's empty scene (``appearance_prior``, the
   training footage's per-pixel median, stored as a buffer): the bottleneck then carries only what
   moves through the scene, so ordinary walkers are reproduced well and unseen objects are not.
5. Speed head (presets): a small MLP on the granularity-2 temporal features classifies the
   history's frame stride (1..K), trained on normal clips played at strides 1..K; its odds of
   "faster than real time" at the worst token join the score, for objects that look normal and
   move too fast.
6. Quality-aware score (``scoring``): worst-patch (and whole-frame) PSNR of both heads plus an SSIM quality term
   (and the speed head's odds, and the still foreground against the empty scene, for objects that arrive
   and stay), standardised by normal-footage statistics held in buffers (set by calibration after training).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import scan as scan_forms
from . import scoring
from .config import ModelConfig
from .layers import MultiTemporal, ScanOp, VSSBlock

OUTPUT_NAMES = ("score_map", "pred_frame", "pred_motion", "frame_score")
INPUT_NAME = "clip"


class SpatialEncoder(nn.Module):
    """Per-frame pyramid: (N, C, H, W) -> three channel-last token grids."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dims
        self.embed = nn.Conv2d(cfg.in_channels, d[0], cfg.patch, stride=cfg.patch)
        self.embed_norm = nn.LayerNorm(d[0])
        self.downs = nn.ModuleList([
            nn.Sequential(nn.Conv2d(d[0], d[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(d[1], d[2], 2, stride=2)),
        ])
        self.stages = nn.ModuleList(
            nn.Sequential(*[VSSBlock(d[i], cfg.d_state, cfg.expand, cfg.mlp_ratio) for _ in range(cfg.depths[i])])
            for i in range(3))

    def first_stage(self, frames):
        """(N, C, H, W) -> the granularity-1 grid only (what the appearance head's fine skip reads)."""
        return self.stages[0](self.embed_norm(self.embed(frames).permute(0, 2, 3, 1)))

    def forward(self, frames):
        x = self.first_stage(frames)
        grids = [x]
        for down, stage in zip(self.downs, self.stages[1:]):
            x = stage(down(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
            grids.append(x)
        return grids


class Decoder(nn.Module):
    """Coarse stream (B, d3, H/4p, W/4p) + narrow skip (B, s, H/2p, W/2p) -> image (B, C, H, W)."""

    def __init__(self, cfg: ModelConfig, skip1_dim: int = 0):
        super().__init__()
        d, p = cfg.dims, cfg.patch
        self.up3 = nn.ConvTranspose2d(d[2], d[1], 2, stride=2)
        self.block2 = nn.Sequential(nn.Conv2d(d[1] + cfg.skip_dim, d[1], 3, padding=1), nn.GELU())
        self.up2 = nn.ConvTranspose2d(d[1], d[0], 2, stride=2)
        self.block1 = nn.Sequential(nn.Conv2d(d[0] + skip1_dim, d[0], 3, padding=1), nn.GELU())
        self.up1 = nn.ConvTranspose2d(d[0], d[0], p, stride=p)
        self.head = nn.Sequential(nn.GELU(), nn.Conv2d(d[0], cfg.in_channels, 3, padding=1))

    def forward(self, coarse, skip, skip1=None):
        x = self.block2(torch.cat([self.up3(coarse), skip], dim=1))
        x = self.up2(x)
        x = self.block1(x if skip1 is None else torch.cat([x, skip1], dim=1))
        return self.head(self.up1(x))


class M2S2L(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dims
        self.spatial = SpatialEncoder(cfg)
        self.temporal2 = MultiTemporal(d[1], cfg.d_state, cfg.expand, cfg.temporal_scales)
        self.temporal3 = MultiTemporal(d[2], cfg.d_state, cfg.expand, cfg.temporal_scales)
        self.app_proj = nn.Linear(d[2], d[2])
        self.mot_proj = nn.Linear(d[2], d[2])
        self.app_skip = nn.Linear(d[1], cfg.skip_dim)
        self.mot_skip = nn.Linear(d[1], cfg.skip_dim)
        self.app_skip1 = nn.Linear(d[0], cfg.skip1_dim) if cfg.skip1_dim else None
        self.app_decoder = Decoder(cfg, cfg.skip1_dim)
        self.mot_decoder = Decoder(cfg)
        self.speed_head = None
        if cfg.speed_classes:
            self.speed_head = nn.Sequential(nn.Linear(d[1], d[1]), nn.GELU(), nn.Linear(d[1], cfg.speed_classes))
        # Normal-footage statistics for the score; identity until calibrated after training.
        self.component_names = scoring.component_names(bool(cfg.speed_classes), cfg.score_background)
        n = len(self.component_names)
        self.register_buffer("score_mean", torch.zeros(n))
        self.register_buffer("score_std", torch.ones(n))
        self.register_buffer("score_weights", torch.ones(n))
        self.register_buffer("map_scale", torch.ones(2))
        # atanh of the empty scene in [-1, 1]; zeros (= mid grey) until set by training
        self.register_buffer("appearance_prior", torch.zeros(cfg.in_channels, cfg.height, cfg.width))

    # -- parts ---------------------------------------------------------------------------------
    def encode(self, clip):
        """clip (B, T, C, H, W) -> appearance/motion streams at granularities 3 and 2.

        With ``cfg.predict`` only the T-1 history frames are encoded: the heads then predict the
        target instead of reconstructing it, so an object that never appeared in training cannot
        reach them through the target's own tokens. With ``cfg.sparse_history`` too, the older ones
        at stride 2 (``ModelConfig.encoded_frames``)."""
        if self.cfg.predict:
            clip = clip[:, :-1]
            if self.cfg.sparse_history:
                clip = clip[:, list(self.cfg.encoded_frames())]
        b, t = clip.shape[:2]
        g1, g2, g3 = self.spatial(clip.flatten(0, 1))
        f2 = self.temporal2(g2.view(b, t, *g2.shape[1:]))
        f3 = self.temporal3(g3.view(b, t, *g3.shape[1:]))
        streams = {
            "app": self.app_proj(f3), "mot": self.mot_proj(f3),
            "app_skip": self.app_skip(f2), "mot_skip": self.mot_skip(f2),
        }
        if self.speed_head is not None:
            streams["speed_logits"] = self.speed_head(f2)
        if self.app_skip1 is not None:  # the last encoded frame's finest tokens, squeezed narrow
            # (a --split head gets only the coarser grids: it recomputes stage 1 for the target)
            g1_target = self.spatial.first_stage(clip[:, -1]) if g1 is None else g1.view(b, t, *g1.shape[1:])[:, -1]
            streams["app_skip1"] = self.app_skip1(g1_target)
        return streams

    def decode(self, streams):
        def nchw(x):
            return x.permute(0, 3, 1, 2)
        skip1 = streams.get("app_skip1")
        pred_frame = torch.tanh(self.app_decoder(nchw(streams["app"]), nchw(streams["app_skip"]),
                                                 None if skip1 is None else nchw(skip1))
                                + self.appearance_prior)
        pred_motion = 2.0 * torch.tanh(self.mot_decoder(nchw(streams["mot"]), nchw(streams["mot_skip"])))
        return pred_frame, pred_motion

    def outputs(self, clip):
        """Everything training and analysis need: predictions, streams, score components."""
        streams = self.encode(clip)
        pred_frame, pred_motion = self.decode(streams)
        target = clip[:, -1]
        motion = target - clip[:, -2]
        comps, e_app, e_mot = scoring.components(pred_frame, target, pred_motion, motion,
                                                  self.cfg.score_window, self.cfg.score_stride,
                                                  self.cfg.score_whole_frame)
        extra = []
        if "speed_logits" in streams:
            extra.append(scoring.irregularity(streams["speed_logits"]))
        if self.cfg.score_background:
            extra.append(self.background_component(clip))
        if extra:
            comps = torch.cat([comps, torch.stack(extra, dim=1)], dim=1)
        return {
            "pred_frame": pred_frame, "pred_motion": pred_motion, "target": target, "motion": motion,
            "streams": streams, "components": comps,
            "score_map": scoring.score_map(e_app, e_mot, self.map_scale),
            "frame_score": scoring.combine(comps, self.score_mean, self.score_std, self.score_weights,
                                           self.cfg.score_tau),
        }

    def forward(self, clip):
        """The deployed graph: (score_map, pred_frame, pred_motion, frame_score), see OUTPUT_NAMES."""
        out = self.outputs(clip)
        return tuple(out[name] for name in OUTPUT_NAMES)

    def background_component(self, clip, floor: float | None = None):
        """(B,) the still-foreground score component (``scoring.still_foreground``) in dB. It reads
        the clip and the empty scene only, no trained weight. ``floor``: another noise floor than
        the config's (benchmarks/score_study.py compares them on the same model)."""
        floor = self.cfg.background_floor if floor is None else floor
        still = scoring.still_foreground(clip, torch.tanh(self.appearance_prior), floor=floor)
        return scoring.pooled_db(still, self.cfg.score_window, self.cfg.score_stride, self.cfg.score_whole_frame)

    @torch.no_grad()
    def set_appearance_prior(self, background: torch.Tensor) -> None:
        """Store the empty scene (C, H, W) in [-1, 1] that the appearance head predicts on top of."""
        self.appearance_prior.copy_(torch.atanh(background.clamp(-0.98, 0.98)))

    def scan_sites(self) -> list[ScanOp]:
        return [m for m in self.modules() if isinstance(m, ScanOp)]

    def use_scan_form(self, form: str | None) -> "M2S2L":
        """Run every selective scan of this model in ``form`` (None: the dispatcher's choice).

        An attribute of this model's scan sites, not a process-wide switch (benchmarks and tests
        compare forms on one model; a server may hold several models)."""
        scan_forms.check_scan_form(form)
        for site in self.scan_sites():
            site.form = form
        return self


def decorrelation_loss(streams) -> torch.Tensor:
    """Mean squared cosine similarity between appearance and motion features (0 = orthogonal)."""
    loss = 0.0
    for a, m in ((streams["app"], streams["mot"]), (streams["app_skip"], streams["mot_skip"])):
        loss = loss + F.cosine_similarity(a, m, dim=-1, eps=1e-6).pow(2).mean()
    return loss / 2
