"""Train M2S2L on normal footage, then calibrate the score on held-out normal footage.

Losses: MSE of the appearance head (target frame, foreground-weighted), ``grad_weight`` x the
L1 difference of its image gradients, ``motion_weight`` x MSE of the motion head (target minus
previous frame), ``decor_weight`` x the appearance/motion decorrelation loss, and with a speed
head ``speed_weight`` x its stride cross-entropy.
The last training video (or the last 20% of frames when there is only one) is held out: after
training, the score components' mean/std there become the model's score buffers and its
``threshold_quantile`` quantile of frame scores becomes the alert threshold (causal protocol).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..contract import InputContract, prepare_frames, sliding_clips
from ..data import open_dataset
from ..errors import UserError
from ..files import atomic_write_bytes, atomic_write_json
from ..model import M2S2L, decorrelation_loss, preset_config, scoring
from ..model.checkpoint import WEIGHTS, load_checkpoint, save_checkpoint
from ..ops import scan
from ..runners.base import Runner
from ..runners.torch_runner import torch_device
from .clip_loop import score_prepared

STATE_WEIGHTS = "train_state.safetensors"
STATE_JSON = "train_state.json"


@dataclass
class TrainOptions:
    preset: str = "tiny"
    epochs: int | None = None
    minutes: float | None = None
    steps: int | None = None        # optimiser steps (a reproducible budget: same steps, same weights)
    batch: int = 8
    lr: float = 2e-3
    seed: int = 0
    motion_weight: float = 2.0
    fg_weight: float = 10.0         # foreground emphasis of the appearance loss (0 = plain MSE)
    decor_weight: float = 0.1
    grad_weight: float = 0.0        # image-gradient term of the appearance loss (0 = none; docs/results.md)
    speed_weight: float = 0.5       # weight of the speed head's stride cross-entropy (models with one)
    fast_share: float = 0.5         # share of each batch played faster than real time (models with a speed head)
    channels: str = "auto"          # auto | 1 | 3
    resize: str = "stretch"
    clip_len: int = 5
    sparse_history: bool = False    # encode the older history frames at stride 2 (ModelConfig.sparse_history)
    threshold_quantile: float = 0.995
    checkpoint_every_s: float = 60.0
    resume: bool = False
    device: str = "cpu"             # cpu | cuda | cuda:N


@dataclass
class TrainData:
    clips: list[tuple[int, int]]                 # (video index, first frame) of every training clip
    frames: list[np.ndarray]                     # prepared (N, C, H, W) per training video
    calibration: list[tuple[str, np.ndarray]]    # held-out normal footage (name, prepared frames)
    summary: dict


def _channels_of(frames: np.ndarray) -> int:
    if frames.ndim == 3 or frames.shape[-1] == 1:
        return 1
    sample = frames[:: max(1, len(frames) // 8)]
    return 1 if (np.array_equal(sample[..., 0], sample[..., 1]) and np.array_equal(sample[..., 1], sample[..., 2])) else 3


def load_training_data(data_root, layout: str, contract_kw: dict, preset: str, channels: str,
                       log: Callable[[str], None] = print) -> tuple[TrainData, InputContract]:
    dataset = open_dataset(data_root, layout)
    if not dataset.train:
        raise UserError(f"{data_root} ({dataset.layout} layout) has no training videos")
    cfg = preset_config(preset)
    raw = [v.load() for v in dataset.train]
    n_channels = _channels_of(raw[0]) if channels == "auto" else int(channels)
    contract = InputContract(height=cfg.height, width=cfg.width, channels=n_channels, fps=dataset.fps,
                             **contract_kw)
    prepared = [prepare_frames(r, contract) for r in raw]
    names = [v.name for v in dataset.train]
    if len(prepared) >= 2:
        calibration = [(names[-1], prepared[-1])]
        train = prepared[:-1]
    else:
        cut = int(len(prepared[0]) * 0.8)
        calibration = [(names[0] + "[80%:]", prepared[0][cut:])]
        train = [prepared[0][:cut]]
    clips = [(vi, int(s[0])) for vi, f in enumerate(train) for s in sliding_clips(len(f), contract.clip_len)]
    if not clips or len(calibration[0][1]) < contract.clip_len:
        raise UserError(f"training videos in {data_root} are shorter than one clip of {contract.clip_len} frames")
    summary = {"data_root": str(Path(data_root).resolve()), "layout": dataset.layout,
               "train_videos": len(train), "calibration_videos": [n for n, _ in calibration],
               "train_frames": int(sum(len(f) for f in train)), "train_clips": len(clips),
               "source_fps": dataset.fps}
    log(f"data: {dataset.layout} layout, {len(train)} training videos ({summary['train_frames']} frames), "
        f"held-out calibration: {', '.join(summary['calibration_videos'])}")
    return TrainData(clips, train, calibration, summary), contract


def _batch(data: TrainData, picks: list[tuple[int, int]], clip_len: int, strides=None) -> torch.Tensor:
    """Clips of consecutive frames; with ``strides``, clip i's history takes every k-th frame
    (k = strides[i]) and its target is still the frame right after the last history frame: normal
    footage played k times faster, with the next real frame to predict (speed-head training).
    A video too short for stride k gets the largest that fits, written back into ``strides``."""
    if strides is None:
        return torch.from_numpy(np.stack([data.frames[v][s:s + clip_len] for v, s in picks]))
    out = []
    for i, (v, s) in enumerate(picks):
        f = data.frames[v]
        strides[i] = k = max(1, min(int(strides[i]), (len(f) - 2) // max(1, clip_len - 2)))  # a short video: slower
        last = k * (clip_len - 2)                          # offset of the last history frame
        start = max(0, min(s, len(f) - 2 - last))
        out.append(np.concatenate([f[start:start + last + 1:k], f[start + last + 1][None]]))
    return torch.from_numpy(np.stack(out))


def background_of(frames: list[np.ndarray]) -> torch.Tensor:
    """Per-pixel temporal median of the training footage: the fixed camera's empty scene (C, H, W)."""
    stack = np.concatenate([f[:: max(1, len(f) // 40)] for f in frames])
    return torch.from_numpy(np.median(stack, axis=0).astype(np.float32))


def gradient_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean | |d pred| - |d target| | over horizontal and vertical neighbour differences. A squared
    error is minimised by a blurred walker (the mean of where it may be); edges that must match
    keep predicted figures sharp, so a normal walker's error stays small and an unseen shape's
    does not (future-frame prediction's gradient loss, Liu et al., CVPR 2018)."""
    return sum((torch.diff(pred, dim=dim).abs() - torch.diff(target, dim=dim).abs()).abs().mean() for dim in (-1, -2))


def training_loss(model: M2S2L, clips: torch.Tensor, opts: TrainOptions, background: torch.Tensor | None = None,
                  strides: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Weighted MSEs. With a background, appearance pixels are weighted 1 + fg_weight*|target - bg|:
    walkers cover a few percent of a surveillance frame, so a plain MSE learns the static scene
    and leaves people blurry, and blurry people score as anomalous as real anomalies.

    With ``strides`` (models with a speed head) each granularity-2 token also classifies its
    clip's history stride (cross-entropy), weighted by how much moves under the token: a token on
    the empty background cannot tell a stride and would only learn noise."""
    out = model.outputs(clips)
    sq = (out["pred_frame"] - out["target"]).pow(2)
    if background is not None and opts.fg_weight > 0:
        weight = 1.0 + opts.fg_weight * (out["target"] - background).abs()
        app = (sq * weight).mean() / weight.mean()
    else:
        app = sq.mean()
    mot = (out["pred_motion"] - out["motion"]).pow(2).mean()
    dec = decorrelation_loss(out["streams"])
    loss = app + opts.motion_weight * mot + opts.decor_weight * dec
    parts = {"app": app.item(), "motion": mot.item(), "decor": dec.item()}
    if opts.grad_weight > 0:
        grad = gradient_loss(out["pred_frame"], out["target"])
        loss = loss + opts.grad_weight * grad
        parts["grad"] = grad.item()
    if strides is not None and "speed_logits" in out["streams"]:
        logits = out["streams"]["speed_logits"]                                  # (B, h, w, K)
        target = (strides.to(logits.device) - 1).view(-1, 1, 1).expand(logits.shape[:3])
        ce = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none")
        moving = (clips[:, 1:-1] - clips[:, :-2]).abs().mean(dim=(1, 2))[:, None]  # history motion (B, 1, H, W)
        w = F.adaptive_avg_pool2d(moving, logits.shape[1:3]).flatten()
        ce = (ce * w).sum() / w.sum().clamp(min=1e-6)
        loss = loss + opts.speed_weight * ce
        parts["speed"] = ce.item()
    return loss, parts


# -- resumable optimiser state, stored with safetensors (no pickle) -----------------------------
def _save_train_state(run_dir: Path, model, optimizer, step: int, elapsed: float, opts: TrainOptions):
    tensors = {}
    for pid, st in optimizer.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
    groups = optimizer.state_dict()["param_groups"]
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    atomic_write_bytes(run_dir / STATE_WEIGHTS, lambda tmp: save_file(tensors, tmp))
    atomic_write_json(run_dir / STATE_JSON, {"step": step, "elapsed_s": elapsed, "param_groups": groups,
                                             "options": asdict(opts), "toolkit_version": __version__})


def _check_resumable(run_dir: Path, opts: TrainOptions) -> None:
    """A run continues with the clips it started with (length, sparse history): the weights do not fix
    them, the data and the encoder's frame choice do."""
    try:
        saved = json.loads((run_dir / STATE_JSON).read_text()).get("options", {})
    except (OSError, ValueError):
        return  # no readable state: _load_train_state or the weights-only path reports it
    started = saved.get("clip_len", InputContract.clip_len)  # states saved before the option: the contract's default
    if started != opts.clip_len:
        raise UserError(f"{run_dir} was trained with clips of {started} frames; resume it with --clip-len {started}")
    sparse = saved.get("sparse_history", False)
    if sparse != opts.sparse_history:
        raise UserError(f"{run_dir} was trained {'with' if sparse else 'without'} --sparse-history; resume it the same way")


def _load_train_state(run_dir: Path, model, optimizer) -> tuple[int, float]:
    try:
        meta = json.loads((run_dir / STATE_JSON).read_text())
        tensors = load_file(str(run_dir / STATE_WEIGHTS))
    except (OSError, ValueError, SafetensorError) as e:
        raise UserError(f"cannot resume from {run_dir}: training state is missing or corrupt ({e})") from None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("model."):
            continue
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), float(meta["elapsed_s"])


@torch.no_grad()
def calibrate(model: M2S2L, contract: InputContract, calibration, quantile: float) -> dict:
    """Set the score buffers from held-out normal footage and return the calibration record."""
    model.eval()
    model.score_mean.zero_()
    model.score_std.fill_(1.0)
    model.map_scale.fill_(1.0)
    runner = _InMemoryRunner(model, contract)
    comps, e_app, e_mot = [], [], []
    for name, frames in calibration:
        vs = score_prepared(runner, frames, name=name)
        comps.append(vs.components[vs.first_decidable:])
        e_app.append(vs.extra["e_app"])
        e_mot.append(vs.extra["e_mot"])
    comps = torch.from_numpy(np.concatenate(comps))
    model.score_mean.copy_(comps.mean(dim=0))
    model.score_std.copy_(comps.std(dim=0).clamp(min=1e-3))
    model.map_scale.copy_(torch.tensor([max(float(np.mean(np.concatenate(e))), 1e-6) for e in (e_app, e_mot)]))
    scores = scoring.combine(comps, model.score_mean.cpu(), model.score_std.cpu(), model.score_weights.cpu(),
                             model.cfg.score_tau).numpy()
    return {"videos": [n for n, _ in calibration], "n_frames": int(len(scores)),
            "components": list(model.component_names),
            "component_mean": model.score_mean.tolist(), "component_std": model.score_std.tolist(),
            "map_scale": model.map_scale.tolist(),
            "score_mean": float(scores.mean()), "score_std": float(scores.std()),
            "threshold_quantile": quantile, "threshold": float(np.quantile(scores, quantile))}


class _InMemoryRunner(Runner):
    """A runner around a model that is not saved yet (calibration during training); it also
    returns the per-clip mean error of each head, which set the score map's scale."""

    def __init__(self, model: M2S2L, contract: InputContract):
        self.model, self.contract, self.name = model, contract, "torch-train"

    def _infer(self, clips):
        device = self.model.appearance_prior.device
        out = {k: v.cpu() if torch.is_tensor(v) else v
               for k, v in self.model.outputs(torch.from_numpy(np.ascontiguousarray(clips)).to(device)).items()}
        e_app = (out["pred_frame"] - out["target"]).pow(2).flatten(1).mean(1)
        e_mot = (out["pred_motion"] - out["motion"]).pow(2).flatten(1).mean(1)
        return {"frame_score": out["frame_score"].numpy(), "components": out["components"].numpy(),
                "e_app": e_app.numpy(), "e_mot": e_mot.numpy()}


def train(data_root, out_dir, layout: str = "auto", opts: TrainOptions | None = None,
          log: Callable[[str], None] = print, progress_factory=None) -> dict:
    """Train, calibrate and save a checkpoint to ``out_dir``; returns the training summary."""
    opts = opts or TrainOptions()
    if opts.epochs is None and opts.minutes is None and opts.steps is None:
        opts.epochs = 1
    if (opts.epochs is not None and opts.epochs < 1) or (opts.minutes is not None and opts.minutes <= 0) \
            or (opts.steps is not None and opts.steps < 1):
        raise UserError("--epochs and --steps must be >= 1 and --minutes > 0")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is not a folder")
    if (out_dir / WEIGHTS).exists() and not opts.resume:
        raise UserError(f"{out_dir} already holds a checkpoint; pass --resume to continue it or choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {out_dir}: {e.strerror}") from None
    if opts.resume:
        _check_resumable(out_dir, opts)
    device = torch_device(opts.device)
    t_job = time.perf_counter()       # --minutes covers the whole job: data preparation and calibration too

    random.seed(opts.seed)
    np.random.seed(opts.seed)
    torch.manual_seed(opts.seed)
    data, contract = load_training_data(data_root, layout, {"resize": opts.resize, "clip_len": opts.clip_len},
                                        opts.preset, opts.channels, log)
    cfg = preset_config(opts.preset, in_channels=contract.channels, clip_len=contract.clip_len,
                        sparse_history=opts.sparse_history)
    model = M2S2L(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=1e-4)
    step, elapsed_before = 0, 0.0
    if opts.resume and (out_dir / STATE_JSON).exists():
        step, elapsed_before = _load_train_state(out_dir, model, optimizer)
        log(f"resumed from step {step} ({elapsed_before:.0f} s trained)")
    elif opts.resume and (out_dir / WEIGHTS).exists():
        model.load_state_dict(load_checkpoint(out_dir).state)
        log("resumed from saved weights (no optimiser state found)")
    scan_form = scan.scan_form_for(device.type == "cuda", needs_grad=True)
    log(f"device: {_device_name(device)}, {scan_form} scan form")

    background = background_of(data.frames).to(device)
    if step == 0:  # a resumed run keeps the prior it was trained with
        model.set_appearance_prior(background)
    steps_per_epoch = max(1, len(data.clips) // opts.batch)
    limits = []                       # further steps allowed by --epochs and --steps (the tighter wins)
    if opts.epochs is not None:
        limits.append(opts.epochs * steps_per_epoch)
    if opts.steps is not None:
        limits.append(opts.steps)
    total_steps = step + min(limits) if limits else None
    # what is left of --minutes after loading; calibration's share is estimated as training goes
    budget_s = None if opts.minutes is None else opts.minutes * 60.0 - (time.perf_counter() - t_job)
    if budget_s is not None and budget_s <= 0:
        raise UserError(f"--minutes {opts.minutes:g} is used up by loading the data "
                        f"({time.perf_counter() - t_job:.0f} s); give more minutes")
    calib_clips = sum(max(0, len(frames) - contract.clip_len + 1) for _, frames in data.calibration)
    rng = np.random.default_rng(opts.seed + step)
    order: list[int] = []
    t_start = time.perf_counter()
    step_at_start = step
    last_ckpt = t_start
    losses: list[float] = []
    parts: dict = {}
    progress = progress_factory(total_steps, budget_s) if progress_factory else None
    model.train()
    while True:
        now = time.perf_counter() - t_start
        if total_steps is not None and step >= total_steps:
            break
        if budget_s is not None and now + _calibration_estimate(now, step - step_at_start, opts.batch,
                                                                calib_clips) >= budget_s:
            break
        if len(order) < opts.batch:
            order = list(rng.permutation(len(data.clips)))
        picks = [data.clips[order.pop()] for _ in range(opts.batch)]
        lr = opts.lr * (0.5 * (1 + math.cos(math.pi * _fraction(step, total_steps, now, budget_s))) * 0.95 + 0.05)
        for g in optimizer.param_groups:
            g["lr"] = lr
        strides = None
        if cfg.speed_classes:          # a share of each batch plays at strides 2..K (never a real camera's)
            strides = np.ones(opts.batch, dtype=np.int64)
            n_fast = int(round(opts.batch * opts.fast_share))
            strides[opts.batch - n_fast:] = rng.integers(2, cfg.speed_classes + 1, size=n_fast)
        clips = _batch(data, picks, contract.clip_len, strides).to(device)
        loss, parts = training_loss(model, clips, opts, background,
                                    None if strides is None else torch.from_numpy(strides))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        if progress is not None:
            progress(step, time.perf_counter() - t_start, losses[-1])
        if time.perf_counter() - last_ckpt > opts.checkpoint_every_s:
            _save_train_state(out_dir, model, optimizer, step, elapsed_before + time.perf_counter() - t_start, opts)
            last_ckpt = time.perf_counter()
    train_seconds = time.perf_counter() - t_start
    _save_train_state(out_dir, model, optimizer, step, elapsed_before + train_seconds, opts)

    calibration = calibrate(model, contract, data.calibration, opts.threshold_quantile)
    model.cpu()
    summary = {**data.summary, "preset": opts.preset, "steps": step, "batch": opts.batch,
               "epochs_done": round(step / steps_per_epoch, 2), "train_seconds": round(train_seconds, 1),
               "total_train_seconds": round(elapsed_before + train_seconds, 1),
               "job_seconds": round(time.perf_counter() - t_job, 1),
               "final_loss": float(np.mean(losses[-20:])) if losses else None, "final_parts": parts,
               "seed": opts.seed, "threads": torch.get_num_threads(), "device": _device_name(device),
               "scan_form": scan_form,
               "options": asdict(opts)}
    save_checkpoint(out_dir, model, contract, {"training": summary, "calibration": calibration})
    return summary


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _calibration_estimate(elapsed: float, steps: int, batch: int, clips: int) -> float:
    """Seconds calibration will take: a forward pass costs about a third of a training step per clip."""
    if steps == 0:
        return 0.0
    return elapsed / (steps * batch) * clips / 3.0


def _fraction(step, total_steps, now, budget_s) -> float:
    """Progress through the schedule in [0, 1], by steps or by time, whichever bounds the run."""
    fr = []
    if total_steps:
        fr.append(step / total_steps)
    if budget_s:
        fr.append(now / budget_s)
    return min(1.0, max(fr)) if fr else 0.0

