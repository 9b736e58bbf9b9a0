"""Readers for the dataset layouts of docs/data.md, all producing the same Dataset of Videos.

Frame labels are read eagerly and checked against frame counts when the dataset is opened, so a
bad ground-truth file fails before hours of training or evaluation; pixel masks load lazily.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .video import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    count_frames,
    natural_key,
    read_image,
    read_video,
    video_info,
)

LAYOUTS = ("ped2", "avenue", "shanghaitech", "frames", "videos")

_EXPECTED = {
    "ped2": "UCSDped2/Train/Train001/*.tif and UCSDped2/Test/Test001/*.tif",
    "avenue": "training_videos/*.avi and testing_videos/*.avi",
    "shanghaitech": "training/videos/*.avi and testing/frames/<video>/*.jpg",
    "frames": "training/frames/<video>/*.jpg and testing/frames/<video>/*.jpg",
    "videos": "a video file or a folder of video files",
}
_FPS = {"ped2": 10.0, "avenue": 25.0, "shanghaitech": 24.0}


@dataclass
class Video:
    """One video of a dataset: an image sequence or a video file, with optional ground truth."""

    name: str
    frame_paths: list[Path] | None = None
    video_path: Path | None = None
    labels: np.ndarray | None = None
    pixel_masks: Callable[[], np.ndarray] | None = None
    fps: float | None = None
    _n_frames: int | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.frame_paths is None) == (self.video_path is None):
            raise ValueError(f"video {self.name!r} needs exactly one of frame_paths or video_path")
        if self.frame_paths is not None:
            self.frame_paths = [Path(p) for p in self.frame_paths]
        if self.video_path is not None:
            self.video_path = Path(self.video_path)
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.uint8)

    def num_frames(self) -> int:
        if self.frame_paths is not None:
            return len(self.frame_paths)
        if self._n_frames is None:
            self._n_frames = count_frames(self.video_path)
        return self._n_frames

    def load(self, max_frames: int | None = None) -> np.ndarray:
        """uint8 frames (N,H,W) gray or (N,H,W,3) BGR."""
        if self.video_path is not None:
            frames, _ = read_video(self.video_path, max_frames)
            if max_frames is None:
                self._n_frames = len(frames)
                _check_label_length(self, len(frames))
            return frames
        paths = self.frame_paths if max_frames is None else self.frame_paths[:max_frames]
        images = [read_image(p) for p in paths]
        if not images:
            return np.zeros((0, 0, 0), np.uint8)
        if any(im.ndim == 3 for im in images):
            images = [np.repeat(im[:, :, None], 3, axis=2) if im.ndim == 2 else im for im in images]
        first = images[0].shape
        for p, im in zip(paths, images):
            if im.shape != first:
                raise DataError(
                    f"frame {p} is {im.shape[1]}x{im.shape[0]}, but the first frame of video "
                    f"{self.name} is {first[1]}x{first[0]}"
                )
        return np.stack(images)


@dataclass
class Dataset:
    root: Path
    layout: str
    train: list[Video]
    test: list[Video]
    fps: float | None


def _check_label_length(video: Video, n_frames: int) -> None:
    if video.labels is not None and len(video.labels) != n_frames:
        raise DataError(
            f"labels of video {video.name} have {len(video.labels)} entries but the video has "
            f"{n_frames} frames"
        )


def _visible(p: Path) -> bool:
    return not p.name.startswith(".") and p.name != "__MACOSX"


def _dirs(d: Path | None) -> list[Path]:
    if d is None or not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if p.is_dir() and _visible(p)), key=natural_key)


def _files(d: Path | None, exts) -> list[Path]:
    if d is None or not d.is_dir():
        return []
    return sorted(
        (p for p in d.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() in exts),
        key=natural_key,
    )


def _child(d: Path | None, *names: str) -> Path | None:
    """Sub-folder by path, matching each name case-insensitively (datasets unpacked on Windows)."""
    for name in names:
        if d is None or not d.is_dir():
            return None
        exact = d / name
        if exact.is_dir():
            d = exact
            continue
        d = next((p for p in d.iterdir() if p.is_dir() and p.name.lower() == name.lower()), None)
    return d


def image_frames(folder: Path) -> list[Path]:
    """The image frames of a folder in play order: natural sort, hidden files skipped (every reader's rule)."""
    return _files(folder, IMAGE_EXTS)


def _image_video(folder: Path, **kwargs) -> Video:
    frames = image_frames(folder)
    if not frames:
        raise DataError(f"video folder {folder} contains no image frames ({', '.join(IMAGE_EXTS)})")
    return Video(name=folder.name, frame_paths=frames, **kwargs)


def _file_video(path: Path, **kwargs) -> Video:
    return Video(name=path.stem, video_path=path, **kwargs)


# ---------------------------------------------------------------- layout detection


def _matches(d: Path, layout: str) -> bool:
    if layout == "ped2":
        return any(_dirs(_child(d, sub)) for sub in ("Train", "Test"))
    if layout == "avenue":
        return _child(d, "training_videos") is not None or _child(d, "testing_videos") is not None
    if layout == "shanghaitech":
        return bool(_files(_child(d, "training", "videos"), VIDEO_EXTS))
    if layout == "frames":
        return _child(d, "training", "frames") is not None or _child(d, "testing", "frames") is not None
    if layout == "videos":
        return (d.is_file() and d.suffix.lower() in VIDEO_EXTS) or bool(_files(d, VIDEO_EXTS))
    raise AssertionError(layout)


def _layouts_of(d: Path) -> list[str]:
    return [name for name in LAYOUTS[:-1] if _matches(d, name)]


def _resolve(root, layout: str = "auto") -> tuple[str, Path]:
    """(layout, dataset folder): the root itself, or its one sub-folder holding a dataset."""
    root = Path(root).expanduser()
    layout = str(layout).lower()
    if layout != "auto" and layout not in LAYOUTS:
        raise DataError(f"unknown dataset layout {layout!r}; choose auto or one of {', '.join(LAYOUTS)}")
    if not root.exists():
        raise DataError(f"dataset path not found: {root}")
    if root.is_file():
        if layout in ("auto", "videos") and _matches(root, "videos"):
            return "videos", root
        raise DataError(f"{root} is a file but not a video ({', '.join(VIDEO_EXTS)}); give a dataset folder")
    if not any(_visible(p) for p in root.iterdir()):
        raise DataError(f"dataset folder is empty: {root}")

    wanted = [n for n in LAYOUTS[:-1] if layout in ("auto", n)]
    own = [n for n in _layouts_of(root) if n in wanted]
    if own:
        return own[0], root
    if layout in ("auto", "videos") and _matches(root, "videos"):
        return "videos", root
    found = [(n[0], c) for c in _dirs(root) if (n := [x for x in _layouts_of(c) if x in wanted])]
    if len(found) > 1:
        preferred = [(n, c) for n, c in found if c.name.lower() == "ucsdped2"]
        if len(preferred) == 1:
            return preferred[0]
        listing = ", ".join(f"{c.name} ({n})" for n, c in found)
        raise DataError(f"{root} holds several datasets ({listing}); point to one of them")
    if found:
        return found[0]
    if layout == "auto":
        expected = "; ".join(f"{n}: {e}" for n, e in _EXPECTED.items())
        raise DataError(f"cannot recognise the dataset layout of {root}; expected one of {expected}")
    raise DataError(f"{root} does not look like a {layout} dataset; expected {_EXPECTED[layout]}")


def detect_layout(root) -> str:
    """Name of the layout at root (or in its single dataset sub-folder), one of LAYOUTS."""
    return _resolve(root)[0]


# ---------------------------------------------------------------- label parsing


def _frame_labels_from_ranges(ranges, n_frames: int, video: str, source: str) -> np.ndarray:
    """1-based inclusive (start, end) ranges -> uint8 0/1 per frame."""
    labels = np.zeros(n_frames, np.uint8)
    for start, end in ranges:
        if start < 1 or end < start or end > n_frames:
            raise DataError(
                f"{source} marks frames {start}:{end} of video {video}, which has {n_frames} frames"
            )
        labels[start - 1:end] = 1
    return labels


def label_runs(labels) -> list[tuple[int, int]]:
    """0-based inclusive (start, end) of every run of 1s in a 0/1 per-frame sequence (the inverse,
    up to 0/1-basing, of the ranges the label files hold): labelled events, synthetic events."""
    flags = np.concatenate([[0], (np.asarray(labels).reshape(-1) > 0).astype(np.int8), [0]])
    edges = np.diff(flags)
    return list(zip(np.flatnonzero(edges == 1).tolist(), (np.flatnonzero(edges == -1) - 1).tolist()))


_GT_LINE = re.compile(r"gt_frame\s*=\s*\[([^\]]*)\]")
_GT_INDEX = re.compile(r"\{\s*(end\s*\+\s*1|\d+)\s*\}")


def _parse_ucsd_m(path: Path) -> list[list[tuple[int, int]]]:
    """Ranges per test video from UCSDped*.m lines such as `...{end+1}.gt_frame = [5:9, 40:50];`."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read ground truth file {path}: {exc}") from None
    entries: dict[int, list[tuple[int, int]]] = {}
    nxt = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("%", 1)[0]
        if "gt_frame" not in line:
            continue
        m = _GT_LINE.search(line)
        if m is None:
            raise DataError(f"cannot parse line {lineno} of {path.name}: {line.strip()!r}")
        idx = _GT_INDEX.search(line[: m.start()])
        pos = int(idx.group(1)) - 1 if idx and idx.group(1).isdigit() else nxt
        nxt = pos + 1
        body = re.sub(r"\s*:\s*", ":", m.group(1).strip())
        ranges = []
        for token in filter(None, re.split(r"[\s,;]+", body)):
            try:
                nums = [int(t) for t in token.split(":")]
            except ValueError:
                raise DataError(f"cannot parse {token!r} on line {lineno} of {path.name}") from None
            if len(nums) == 1:
                ranges.append((nums[0], nums[0]))
            elif len(nums) == 2:
                ranges.append((nums[0], nums[1]))
            elif len(nums) == 3 and nums[1] > 0:
                ranges.extend((f, f) for f in range(nums[0], nums[2] + 1, nums[1]))
            else:
                raise DataError(f"cannot parse {token!r} on line {lineno} of {path.name}")
        entries[pos] = ranges
    if not entries:
        raise DataError(f"no gt_frame lines found in {path}")
    if sorted(entries) != list(range(len(entries))):
        raise DataError(f"{path.name} does not give ground truth for test videos 1..{max(entries) + 1} in order")
    return [entries[i] for i in range(len(entries))]


def _load_mat(path: Path) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError:
        raise DataError(f"{path} is a MATLAB v7.3 file, which is not supported; re-save it with -v7") from None
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError, ... on corrupt files
        raise DataError(f"cannot read MATLAB file {path} ({type(exc).__name__}: {exc})") from None


def _mat_has(path: Path, name: str) -> bool:
    import scipy.io

    try:
        return any(v[0] == name for v in scipy.io.whosmat(str(path)))
    except NotImplementedError:
        return False
    except Exception as exc:
        raise DataError(f"cannot read MATLAB file {path} ({type(exc).__name__}: {exc})") from None


def _vol_label(path: Path) -> list[np.ndarray]:
    """Per-frame masks from an Avenue `volLabel` (a 1xN cell array of 2-D masks)."""
    mat = _load_mat(path)
    if "volLabel" not in mat:
        raise DataError(f"{path} has no variable 'volLabel'")
    vol = mat["volLabel"]
    if vol.dtype == object:
        masks = [np.asarray(m) for m in vol.ravel()]
    elif vol.ndim == 3:
        masks = list(np.moveaxis(vol, 2, 0))
    else:
        raise DataError(f"'volLabel' in {path} is neither a cell array nor an HxWxN array")
    if any(m.ndim != 2 for m in masks):
        raise DataError(f"'volLabel' in {path} holds masks that are not 2-D")
    return masks


def _gt_ranges(entry, source: str, video: str) -> list[tuple[int, int]]:
    """An MNAD/ano_pred gt entry: [start; end] columns (2xK), 1-based inclusive."""
    a = np.asarray(entry)
    if a.size == 0:
        return []
    if a.dtype == object or not np.issubdtype(a.dtype, np.number):
        raise DataError(f"{source}: ground truth of video {video} is not numeric")
    if a.ndim == 1 and a.size == 2:
        a = a.reshape(2, 1)
    elif a.ndim == 2 and a.shape[0] != 2 and a.shape[1] == 2:
        a = a.T
    if a.ndim != 2 or a.shape[0] != 2:
        raise DataError(f"{source}: ground truth of video {video} has shape {a.shape}, expected 2xK [start; end]")
    if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
        raise DataError(f"{source}: ground truth of video {video} holds non-integer frame numbers")
    return [(int(s), int(e)) for s, e in a.T]


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = "masks" if "masks" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise DataError(f"{path} has no array 'masks' (found {', '.join(keys) or 'none'})")
                return z[key]
        return np.load(path, allow_pickle=False)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {what} {path} ({type(exc).__name__}: {exc})") from None


def _npy_labels(path: Path, video: Video) -> np.ndarray:
    a = _load_npy(path, "label file")
    if a.ndim == 2 and 1 in a.shape:
        a = a.ravel()
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise DataError(f"{path} must hold one 0/1 label per frame, got an array of shape {a.shape}")
    if not np.all((a == 0) | (a == 1)):
        raise DataError(f"{path} must hold 0/1 labels, found other values")
    labels = a.astype(np.uint8)
    if len(labels) != video.num_frames():
        raise DataError(
            f"labels in {path.name} have {len(labels)} entries but video {video.name} has "
            f"{video.num_frames()} frames"
        )
    return labels


def _array_masks(path: Path, n_frames: int, video: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        a = _load_npy(path, "pixel mask file")
        if a.ndim != 3 or a.shape[0] != n_frames:
            raise DataError(
                f"pixel masks in {path.name} have shape {a.shape}, expected ({n_frames}, H, W) for video {video}"
            )
        return a != 0

    return load


def _image_masks(folder: Path, n_frames: int, video: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        paths = _files(folder, IMAGE_EXTS)
        if len(paths) != n_frames:
            raise DataError(f"{folder} has {len(paths)} mask images but video {video} has {n_frames} frames")
        masks = []
        for p in paths:
            m = read_image(p)
            m = m.any(axis=2) if m.ndim == 3 else m > 0
            if masks and m.shape != masks[0].shape:
                raise DataError(f"mask {p} is {m.shape[1]}x{m.shape[0]}, unlike the other masks of {video}")
            masks.append(m)
        return np.stack(masks)

    return load


def _mat_masks(path: Path, video: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        masks = _vol_label(path)
        if len({m.shape for m in masks}) > 1:
            raise DataError(f"'volLabel' in {path} holds masks of different sizes for video {video}")
        return np.stack([m != 0 for m in masks])

    return load


# ---------------------------------------------------------------- layouts


def _is_mask_dir(p: Path) -> bool:
    """UCSD keeps pixel masks of TestNNN in a sibling TestNNN_gt folder."""
    return p.name.lower().endswith("_gt")


def _read_ped2(d: Path) -> tuple[list[Video], list[Video], float | None]:
    fps = _FPS["ped2"]
    train_dir, test_dir = _child(d, "Train"), _child(d, "Test")
    train = [_image_video(p, fps=fps) for p in _dirs(train_dir) if not _is_mask_dir(p)]
    test = [_image_video(p, fps=fps) for p in _dirs(test_dir) if not _is_mask_dir(p)]

    gt_files = _files(test_dir, (".m",))
    if len(gt_files) > 1:
        named = [p for p in gt_files if p.stem.lower() in (d.name.lower(), "ucsdped2")]
        if len(named) != 1:
            names = ", ".join(p.name for p in gt_files)
            raise DataError(f"{test_dir} holds several ground-truth .m files ({names}); keep one")
        gt_files = named
    if gt_files and test:
        per_video = _parse_ucsd_m(gt_files[0])
        if len(per_video) != len(test):
            raise DataError(
                f"{gt_files[0].name} gives ground truth for {len(per_video)} videos but {test_dir} has {len(test)}"
            )
        for video, ranges in zip(test, per_video):
            video.labels = _frame_labels_from_ranges(ranges, video.num_frames(), video.name, gt_files[0].name)
    for video in test:
        mask_dir = _child(test_dir, f"{video.name}_gt")
        if mask_dir is not None:
            video.pixel_masks = _image_masks(mask_dir, video.num_frames(), video.name)
    return train, test, fps


def _avenue_label_file(label_dir: Path, stem: str) -> Path | None:
    names = [f"{stem}_label.mat"]
    if stem.isdigit():
        names.insert(0, f"{int(stem)}_label.mat")
    return next((label_dir / n for n in names if (label_dir / n).is_file()), None)


def _check_video_labels(video: Video) -> None:
    """Label length against the container's frame count, decoding the file only on disagreement."""
    if video.labels is None or video_info(video.video_path)["n_frames"] == len(video.labels):
        return
    _check_label_length(video, video.num_frames())


def _read_avenue(d: Path) -> tuple[list[Video], list[Video], float | None]:
    fps = _FPS["avenue"]
    train = [_file_video(p, fps=fps) for p in _files(_child(d, "training_videos"), VIDEO_EXTS)]
    test = [_file_video(p, fps=fps) for p in _files(_child(d, "testing_videos"), VIDEO_EXTS)]
    label_dir = _child(d, "ground_truth_demo", "testing_label_mask") or _child(d, "testing_label_mask")
    if label_dir is not None:
        for video in test:
            path = _avenue_label_file(label_dir, video.name)
            if path is None:
                raise DataError(f"no ground truth for test video {video.name} in {label_dir}")
            video.labels = np.array([m.any() for m in _vol_label(path)], np.uint8)
            video.pixel_masks = _mat_masks(path, video.name)
            _check_video_labels(video)
    return train, test, fps


def _mnad_gt(d: Path) -> Path | None:
    mats = [p for p in _files(d, (".mat",)) if _mat_has(p, "gt")]
    if len(mats) > 1:
        raise DataError(f"several .mat files with 'gt' in {d} ({', '.join(p.name for p in mats)}); keep one")
    return mats[0] if mats else None


def _read_test_frames(d: Path, fps: float | None) -> list[Video]:
    """testing/frames/<vid>/ with test_frame_mask/<vid>.npy (or a `gt` .mat) and pixel masks."""
    testing = _child(d, "testing")
    test = [_image_video(p, fps=fps) for p in _dirs(_child(testing, "frames"))]
    mask_dir = _child(testing, "test_frame_mask")
    gt_mat = None if mask_dir is not None or not test else _mnad_gt(d)
    if mask_dir is not None:
        for video in test:
            path = mask_dir / f"{video.name}.npy"
            if not path.is_file():
                raise DataError(f"no frame labels for test video {video.name}: {path} is missing")
            video.labels = _npy_labels(path, video)
    elif gt_mat is not None:
        gt = _load_mat(gt_mat)["gt"]
        entries = list(gt.ravel()) if gt.dtype == object else [gt]
        if len(entries) != len(test):
            raise DataError(f"'gt' in {gt_mat.name} has {len(entries)} entries but there are {len(test)} test videos")
        for video, entry in zip(test, entries):
            ranges = _gt_ranges(entry, gt_mat.name, video.name)
            video.labels = _frame_labels_from_ranges(ranges, video.num_frames(), video.name, gt_mat.name)
    pixel_dir = _child(testing, "test_pixel_mask")
    for video in test:
        for ext in (".npz", ".npy"):
            path = pixel_dir / f"{video.name}{ext}" if pixel_dir is not None else None
            if path is not None and path.is_file():
                video.pixel_masks = _array_masks(path, video.num_frames(), video.name)
                break
    return test


def _read_shanghaitech(d: Path) -> tuple[list[Video], list[Video], float | None]:
    fps = _FPS["shanghaitech"]
    train = [_file_video(p, fps=fps) for p in _files(_child(d, "training", "videos"), VIDEO_EXTS)]
    return train, _read_test_frames(d, fps), fps


def _scene_fps(d: Path) -> float | None:
    path = d / "scene.json"
    if not path.is_file():
        return None
    try:
        scene = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as JSON ({exc})") from None
    fps = scene.get("fps") if isinstance(scene, dict) else None
    if fps is None:
        return None
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise DataError(f"'fps' in {path} must be a positive number, got {fps!r}")
    return float(fps)


def _read_frames(d: Path) -> tuple[list[Video], list[Video], float | None]:
    fps = _scene_fps(d)
    train = [_image_video(p, fps=fps) for p in _dirs(_child(d, "training", "frames"))]
    return train, _read_test_frames(d, fps), fps


def _read_videos(root: Path) -> tuple[list[Video], list[Video], float | None]:
    paths = [root] if root.is_file() else _files(root, VIDEO_EXTS)
    stems = [p.stem for p in paths]
    train = []
    for p in paths:
        fps = video_info(p)["fps"] or None
        name = p.stem if stems.count(p.stem) == 1 else p.name
        train.append(Video(name=name, video_path=p, fps=fps))
    return train, [], (train[0].fps if train else None)


_READERS = {
    "ped2": _read_ped2,
    "avenue": _read_avenue,
    "shanghaitech": _read_shanghaitech,
    "frames": _read_frames,
    "videos": _read_videos,
}


def open_dataset(root, layout: str = "auto") -> Dataset:
    """Open a dataset folder (or its parent, or a video file/folder) in one of LAYOUTS.

    A layout may lack its test part (training only) or its training part (evaluation only), not both.
    """
    layout, droot = _resolve(root, layout)
    train, test, fps = _READERS[layout](droot)
    if not train and not test:
        raise DataError(f"no training or test videos found in {droot} ({layout} layout: {_EXPECTED[layout]})")
    return Dataset(root=droot, layout=layout, train=train, test=test, fps=fps)
