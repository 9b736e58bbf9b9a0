"""INT8 calibration clips: drawn from the *training* (normal) videos of a dataset and cached.

Selection (deterministic): every full clip of every training video (the same sliding windows the
model is trained and scored on, T frames ending at a target frame) is numbered in order, and
``n_clips`` of them are taken evenly spaced over that numbering, so all videos and all parts of
each video are represented. Frames are prepared with the model's own input contract (size, resize
policy, channels, [-1, 1] scaling) and resampled to its training frame rate when the footage has
another one.

Cache: ``calibration/clips-KEY.npy`` (float32 (N, T, C, H, W)) + ``clips-KEY.json``; KEY hashes the
dataset root, its training videos (names, frame counts, file sizes and times), the input contract
and the clip count, so any change of data or options makes a new set. Without ``--calib-data``,
the newest cached set whose contract and count match is reused.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from ..contract import InputContract, prepare_frames, resample_indices, sliding_clips
from ..errors import UserError
from ..files import atomic_write_bytes, atomic_write_json

DEFAULT_CLIPS = 64
DEFAULT_DIR = Path("calibration")
SELECTION = "evenly spaced over all sliding clips of the training videos"


def _stamp(video) -> list:
    paths = video.frame_paths if video.frame_paths is not None else [video.video_path]
    if not paths:
        return [video.name, 0, []]
    first, last = paths[0], paths[-1]
    stat = [(p.stat().st_size, int(p.stat().st_mtime)) for p in {first, last}]
    return [video.name, len(paths) if video.frame_paths is not None else str(video.video_path), sorted(stat)]


def _key(root: Path, videos, contract: InputContract, n_clips: int) -> str:
    payload = {"root": str(Path(root).resolve()), "videos": [_stamp(v) for v in videos],
               "contract": contract.to_dict(), "clips": n_clips, "selection": SELECTION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _frame_index(video, fps: float | None, contract: InputContract) -> np.ndarray:
    n = video.num_frames()
    if fps and contract.fps and abs(fps - contract.fps) > 1e-6 * contract.fps:
        return resample_indices(n, fps, contract.fps)
    return np.arange(n, dtype=np.int64)


def draw_clips(dataset, contract: InputContract, n_clips: int = DEFAULT_CLIPS, log=None) -> tuple[np.ndarray, dict]:
    """(clips (n, T, C, H, W) float32, description) from the training videos of an opened dataset."""
    if n_clips < 1:
        raise UserError(f"--calib-clips must be >= 1, got {n_clips}")
    data_root = dataset.root
    videos = list(dataset.train)
    if not videos:
        raise UserError(f"empty calibration set: {data_root} ({dataset.layout} layout) has no training videos "
                        "(INT8 calibration draws clips from normal training footage)")
    T = contract.clip_len
    index = [_frame_index(v, v.fps or dataset.fps, contract) for v in videos]
    counts = [len(sliding_clips(len(ix), T)) for ix in index]
    total = sum(counts)
    if total == 0:
        raise UserError(f"empty calibration set: every training video in {data_root} is shorter than one clip "
                        f"of {T} frames")
    take = np.unique(np.linspace(0, total - 1, num=min(n_clips, total)).round().astype(np.int64))
    starts = np.cumsum([0] + counts)
    clips = []
    for vi, video in enumerate(videos):
        mine = take[(take >= starts[vi]) & (take < starts[vi + 1])] - starts[vi]
        if len(mine) == 0:
            continue
        frames = prepare_frames(video.load(), contract)[index[vi]]
        windows = sliding_clips(len(frames), T)[mine]
        clips.append(frames[windows])
        if log:
            log(f"calibration: {len(mine)} clips from {video.name}")
    data = np.ascontiguousarray(np.concatenate(clips), dtype=np.float32)
    info = {"root": str(Path(dataset.root).resolve()), "layout": dataset.layout, "videos": len(videos),
            "available_clips": int(total), "clips": int(len(data)), "selection": SELECTION,
            "contract": contract.to_dict()}
    return data, info


def calibration_set(contract: InputContract, data_root=None, n_clips: int = DEFAULT_CLIPS,
                    cache_dir: Path = DEFAULT_DIR, layout: str = "auto", log=None) -> tuple[np.ndarray, dict]:
    """Clips for INT8 calibration: from ``data_root`` (cached) or the newest matching cached set."""
    cache_dir = Path(cache_dir)
    if data_root is None:
        return _cached_for(contract, n_clips, cache_dir)
    from ..data import open_dataset
    if n_clips < 1:
        raise UserError(f"--calib-clips must be >= 1, got {n_clips}")
    dataset = open_dataset(data_root, layout)
    key = _key(dataset.root, dataset.train, contract, n_clips)
    npy, meta = cache_dir / f"clips-{key}.npy", cache_dir / f"clips-{key}.json"
    if npy.is_file() and meta.is_file():
        try:
            clips, info = np.load(npy), json.loads(meta.read_text())
            if log:
                log(f"calibration: reusing {len(clips)} cached clips {npy}")
            return clips, {**info, "cache": str(npy), "cached": True}
        except (OSError, ValueError):
            pass                                            # unreadable cache: draw again
    clips, info = draw_clips(dataset, contract, n_clips, log)
    info = {**info, "key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        atomic_write_bytes(npy, lambda tmp: np.save(open(tmp, "wb"), clips))
        atomic_write_json(meta, info)
    except OSError as e:
        raise UserError(f"cannot write the calibration cache in {cache_dir}: {e.strerror or e}") from None
    return clips, {**info, "cache": str(npy), "cached": False}


def _cached_for(contract: InputContract, n_clips: int, cache_dir: Path) -> tuple[np.ndarray, dict]:
    found = []
    for meta in cache_dir.glob("clips-*.json") if cache_dir.is_dir() else []:
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        npy = meta.with_suffix(".npy")
        if info.get("contract") == contract.to_dict() and info.get("clips", 0) >= 1 and npy.is_file() \
                and (n_clips is None or info.get("clips") == n_clips or info.get("available_clips", 0) < n_clips):
            found.append((meta.stat().st_mtime, npy, info))
    if not found:
        raise UserError(f"--int8 needs --calib-data ROOT (normal training footage): no cached calibration set in "
                        f"{cache_dir}/ matches this model's input contract and --calib-clips {n_clips}")
    _, npy, info = max(found, key=lambda f: f[0])
    return np.load(npy), {**info, "cache": str(npy), "cached": True}
