import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from m2s2l_deploy.data import (
    detect_layout,
    iter_video,
    natural_key,
    open_dataset,
    read_image,
    read_video,
    video_info,
)
from m2s2l_deploy.errors import DataError

H, W = 8, 12
VH, VW = 16, 24


def write_frames(folder: Path, n: int, ext: str = ".tif", names=None, start: int = 0) -> Path:
    """Frame i is uniform gray 20*i (+start) so order can be checked after loading."""
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"{i + 1:03d}{ext}" for i in range(n)]
    for i, name in enumerate(names):
        assert cv2.imwrite(str(folder / name), np.full((H, W), start + 20 * i, np.uint8))
    return folder


def write_avi(path: Path, n: int, fps: float = 25.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (VW, VH))
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((VH, VW, 3), 10 * i, np.uint8))
    writer.release()
    return path


def ranges_to_labels(n, ranges):
    """Independent reference: 1-based inclusive ranges -> 0/1 per frame."""
    return np.array([int(any(s <= f <= e for s, e in ranges)) for f in range(1, n + 1)], np.uint8)


def cell(items):
    arr = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        arr[0, i] = item
    return arr


# ---------------------------------------------------------------- ped2

PED2_GT = """TestVideoFile = {};
TestVideoFile{end+1}.gt_frame = [3:5];
TestVideoFile{end+1}.gt_frame = [1:2, 7:10];
% a comment line
TestVideoFile{end+1}.gt_frame = [2:3 5:6];
"""
PED2_TEST = {"Test001": 8, "Test002": 10, "Test003": 6}
PED2_RANGES = [[(3, 5)], [(1, 2), (7, 10)], [(2, 3), (5, 6)]]


@pytest.fixture
def ped2(tmp_path):
    root = tmp_path / "UCSDped2"
    write_frames(root / "Train" / "Train001", 6)
    write_frames(root / "Train" / "Train002", 7)
    for name, n in PED2_TEST.items():
        if name == "Test002":
            write_frames(root / "Test" / name, n, names=[f"{i}.tif" for i in range(1, n + 1)])
        else:
            write_frames(root / "Test" / name, n)
    gt = root / "Test" / "Test001_gt"
    gt.mkdir()
    for i in range(PED2_TEST["Test001"]):
        m = np.zeros((H, W), np.uint8)
        if 3 <= i + 1 <= 5:
            m[2:4, 5:9] = 255
        cv2.imwrite(str(gt / f"frame{i + 1:03d}.bmp"), m)
    (root / "Test" / "UCSDped2.m").write_text(PED2_GT)
    return tmp_path


def test_ped2_labels_exact(ped2):
    for root in (ped2, ped2 / "UCSDped2"):
        assert detect_layout(root) == "ped2"
        ds = open_dataset(root)
        assert ds.layout == "ped2" and ds.fps == 10 and ds.root == ped2 / "UCSDped2"
        assert [v.name for v in ds.train] == ["Train001", "Train002"]
        assert [v.name for v in ds.test] == list(PED2_TEST)
        for video, ranges in zip(ds.test, PED2_RANGES):
            n = PED2_TEST[video.name]
            assert video.num_frames() == n
            assert video.labels.dtype == np.uint8
            assert np.array_equal(video.labels, ranges_to_labels(n, ranges))
        assert ds.train[0].labels is None


def test_ped2_frames_and_masks(ped2):
    ds = open_dataset(ped2, layout="ped2")
    frames = ds.test[1].load()
    assert frames.shape == (10, H, W) and frames.dtype == np.uint8
    assert [int(f[0, 0]) for f in frames] == [20 * i for i in range(10)]
    assert ds.test[1].load(max_frames=3).shape == (3, H, W)
    masks = ds.test[0].pixel_masks()
    assert masks.shape == (8, H, W) and masks.dtype == bool
    assert np.array_equal(masks.any(axis=(1, 2)), ds.test[0].labels.astype(bool))
    assert ds.test[1].pixel_masks is None


def test_ped2_explicit_indices(ped2):
    text = "".join(
        f"TestVideoFile{{{i}}}.gt_frame = [{r}];\n" for i, r in ((2, "1:2,7 : 10"), (1, "3:5"), (3, "2:3 5 6"))
    )
    (ped2 / "UCSDped2" / "Test" / "UCSDped2.m").write_text(text)
    ds = open_dataset(ped2)
    for video, ranges in zip(ds.test, PED2_RANGES):
        assert np.array_equal(video.labels, ranges_to_labels(PED2_TEST[video.name], ranges))


def test_ped2_range_past_end_is_error(ped2):
    (ped2 / "UCSDped2" / "Test" / "UCSDped2.m").write_text(PED2_GT.replace("[3:5]", "[3:9]"))
    with pytest.raises(DataError, match="Test001.*8 frames"):
        open_dataset(ped2)


def test_ped2_line_count_mismatch(ped2):
    (ped2 / "UCSDped2" / "Test" / "UCSDped2.m").write_text("TestVideoFile{end+1}.gt_frame = [3:5];\n")
    with pytest.raises(DataError, match="1 videos"):
        open_dataset(ped2)


def test_ped2_unparseable_m(ped2):
    (ped2 / "UCSDped2" / "Test" / "UCSDped2.m").write_text(PED2_GT.replace("[3:5]", "[3:x]"))
    with pytest.raises(DataError, match="UCSDped2.m"):
        open_dataset(ped2)


def test_ped2_empty_video_folder(ped2):
    (ped2 / "UCSDped2" / "Train" / "Train003").mkdir()
    with pytest.raises(DataError, match="Train003"):
        open_dataset(ped2)


def test_ped2_mask_count_mismatch(ped2):
    next((ped2 / "UCSDped2" / "Test" / "Test001_gt").iterdir()).unlink()
    ds = open_dataset(ped2)
    with pytest.raises(DataError, match="7 mask images"):
        ds.test[0].pixel_masks()


def test_corrupt_frame_named_in_error(ped2):
    bad = ped2 / "UCSDped2" / "Train" / "Train001" / "004.tif"
    bad.write_bytes(b"not an image at all")
    ds = open_dataset(ped2)
    with pytest.raises(DataError, match="004.tif"):
        ds.train[0].load()


# ---------------------------------------------------------------- avenue

AVENUE_TEST = {"01": 7, "02": 5}
AVENUE_ANOMALOUS = {"01": {2, 3, 6}, "02": {0}}


def write_vol_label(path: Path, n: int, anomalous: set) -> None:
    masks = []
    for i in range(n):
        m = np.zeros((VH, VW), np.uint8)
        if i in anomalous:
            m[1 + i % 3, 4] = 1
        masks.append(m)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"volLabel": cell(masks)})


@pytest.fixture
def avenue(tmp_path):
    root = tmp_path / "Avenue Dataset"
    write_avi(root / "training_videos" / "01.avi", 6)
    write_avi(root / "training_videos" / "02.avi", 4)
    for name, n in AVENUE_TEST.items():
        write_avi(root / "testing_videos" / f"{name}.avi", n)
        write_vol_label(
            root / "ground_truth_demo" / "testing_label_mask" / f"{int(name)}_label.mat", n, AVENUE_ANOMALOUS[name]
        )
    return tmp_path


def test_avenue_labels_and_video(avenue):
    ds = open_dataset(avenue)
    assert ds.layout == "avenue" and ds.fps == 25 and ds.root.name == "Avenue Dataset"
    assert [v.name for v in ds.train] == ["01", "02"]
    for video in ds.test:
        n = AVENUE_TEST[video.name]
        expected = np.array([int(i in AVENUE_ANOMALOUS[video.name]) for i in range(n)], np.uint8)
        assert np.array_equal(video.labels, expected)
        masks = video.pixel_masks()
        assert masks.shape == (n, VH, VW) and masks.dtype == bool
        assert np.array_equal(masks.any(axis=(1, 2)), expected.astype(bool))
    frames = ds.test[0].load()
    assert frames.shape == (7, VH, VW, 3) and frames.dtype == np.uint8
    assert ds.train[0].num_frames() == 6


def test_avenue_label_dir_directly_under_root(avenue):
    root = avenue / "Avenue Dataset"
    (root / "ground_truth_demo" / "testing_label_mask").rename(root / "testing_label_mask")
    ds = open_dataset(root, layout="avenue")
    assert ds.test[0].labels.sum() == 3


def test_avenue_label_length_mismatch(avenue):
    write_vol_label(avenue / "Avenue Dataset" / "ground_truth_demo" / "testing_label_mask" / "2_label.mat", 9, set())
    with pytest.raises(DataError, match=r"02.*9.*5|02.*5.*9"):
        open_dataset(avenue)


def test_avenue_corrupt_mat(avenue):
    (avenue / "Avenue Dataset" / "ground_truth_demo" / "testing_label_mask" / "1_label.mat").write_bytes(b"junk" * 50)
    with pytest.raises(DataError, match="1_label.mat"):
        open_dataset(avenue)


def test_avenue_mat_without_vollabel(avenue):
    path = avenue / "Avenue Dataset" / "ground_truth_demo" / "testing_label_mask" / "1_label.mat"
    scipy.io.savemat(str(path), {"other": np.zeros(3)})
    with pytest.raises(DataError, match="volLabel"):
        open_dataset(avenue)


# ---------------------------------------------------------------- shanghaitech


@pytest.fixture
def shanghaitech(tmp_path):
    root = tmp_path / "shanghaitech"
    write_avi(root / "training" / "videos" / "01_001.avi", 5)
    write_frames(root / "testing" / "frames" / "01_0014", 6, ext=".jpg")
    write_frames(root / "testing" / "frames" / "01_0015", 4, ext=".jpg")
    (root / "testing" / "test_frame_mask").mkdir(parents=True)
    np.save(root / "testing" / "test_frame_mask" / "01_0014.npy", np.array([0, 0, 1, 1, 0, 0]))
    np.save(root / "testing" / "test_frame_mask" / "01_0015.npy", np.array([0, 0, 0, 0]))
    (root / "testing" / "test_pixel_mask").mkdir()
    pix = np.zeros((6, H, W), np.uint8)
    pix[2:4, 1, 1] = 1
    np.save(root / "testing" / "test_pixel_mask" / "01_0014.npy", pix)
    return tmp_path


def test_shanghaitech(shanghaitech):
    ds = open_dataset(shanghaitech)
    assert ds.layout == "shanghaitech" and ds.fps == 24
    assert [v.name for v in ds.train] == ["01_001"] and ds.train[0].video_path is not None
    assert [v.name for v in ds.test] == ["01_0014", "01_0015"]
    assert ds.test[0].labels.tolist() == [0, 0, 1, 1, 0, 0]
    assert ds.test[1].labels.tolist() == [0, 0, 0, 0]
    masks = ds.test[0].pixel_masks()
    assert masks.shape == (6, H, W) and masks.sum() == 2
    assert ds.test[1].pixel_masks is None


def test_shanghaitech_missing_label_file(shanghaitech):
    (shanghaitech / "shanghaitech" / "testing" / "test_frame_mask" / "01_0015.npy").unlink()
    with pytest.raises(DataError, match="01_0015"):
        open_dataset(shanghaitech)


def test_corrupt_npy(shanghaitech):
    (shanghaitech / "shanghaitech" / "testing" / "test_frame_mask" / "01_0015.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="01_0015.npy"):
        open_dataset(shanghaitech)


# ---------------------------------------------------------------- frames (generic / MNAD)


@pytest.fixture
def frames_ds(tmp_path):
    root = tmp_path / "scene"
    write_frames(root / "training" / "frames" / "a", 5, ext=".png")
    write_frames(root / "training" / "frames" / "b", 5, ext=".png")
    write_frames(root / "testing" / "frames" / "01", 7, ext=".png")
    write_frames(root / "testing" / "frames" / "02", 6, ext=".png")
    (root / "testing" / "test_frame_mask").mkdir(parents=True)
    np.save(root / "testing" / "test_frame_mask" / "01.npy", np.array([0, 1, 1, 0, 0, 0, 1], np.uint8))
    np.save(root / "testing" / "test_frame_mask" / "02.npy", np.zeros(6, np.uint8))
    (root / "testing" / "test_pixel_mask").mkdir()
    pix = np.zeros((7, H, W), np.uint8)
    pix[[1, 2, 6], 0, 0] = 1
    np.savez_compressed(root / "testing" / "test_pixel_mask" / "01.npz", masks=pix)
    (root / "scene.json").write_text(json.dumps({"fps": 12.5, "seed": 0}))
    return root


def test_frames_layout(frames_ds):
    ds = open_dataset(frames_ds)
    assert ds.layout == "frames" and ds.fps == 12.5 and ds.test[0].fps == 12.5
    assert [v.name for v in ds.train] == ["a", "b"]
    assert ds.test[0].labels.tolist() == [0, 1, 1, 0, 0, 0, 1]
    assert ds.test[1].labels.tolist() == [0] * 6
    masks = ds.test[0].pixel_masks()
    assert masks.dtype == bool and masks.any(axis=(1, 2)).tolist() == [False, True, True, False, False, False, True]
    assert ds.train[0].load().shape == (5, H, W)


def test_frames_no_scene_json_and_parent_root(frames_ds):
    (frames_ds / "scene.json").unlink()
    ds = open_dataset(frames_ds.parent)
    assert ds.root == frames_ds and ds.fps is None


def test_frames_label_length_mismatch(frames_ds):
    np.save(frames_ds / "testing" / "test_frame_mask" / "02.npy", np.zeros(9, np.uint8))
    with pytest.raises(DataError, match=r"9 entries.*02 has 6 frames"):
        open_dataset(frames_ds)


def test_frames_label_values_not_binary(frames_ds):
    np.save(frames_ds / "testing" / "test_frame_mask" / "02.npy", np.array([0, 2, 0, 0, 0, 0]))
    with pytest.raises(DataError, match="0/1"):
        open_dataset(frames_ds)


def test_frames_pixel_mask_mismatch(frames_ds):
    np.save(frames_ds / "testing" / "test_pixel_mask" / "02.npy", np.zeros((3, H, W), np.uint8))
    ds = open_dataset(frames_ds)
    with pytest.raises(DataError, match="02"):
        ds.test[1].pixel_masks()


def test_frames_bad_scene_json(frames_ds):
    (frames_ds / "scene.json").write_text("{not json")
    with pytest.raises(DataError, match="scene.json"):
        open_dataset(frames_ds)


def test_frames_mnad_mat_gt(frames_ds):
    import shutil

    shutil.rmtree(frames_ds / "testing" / "test_frame_mask")
    write_frames(frames_ds / "testing" / "frames" / "03", 10, ext=".png")
    gt = cell([np.array([[2, 7], [3, 7]]), np.zeros((2, 0)), np.array([1, 4])])
    scipy.io.savemat(str(frames_ds / "scene.mat"), {"gt": gt})
    ds = open_dataset(frames_ds)
    assert np.array_equal(ds.test[0].labels, ranges_to_labels(7, [(2, 3), (7, 7)]))
    assert np.array_equal(ds.test[1].labels, np.zeros(6, np.uint8))
    assert np.array_equal(ds.test[2].labels, ranges_to_labels(10, [(1, 4)]))


def test_frames_mnad_mat_wrong_count(frames_ds):
    import shutil

    shutil.rmtree(frames_ds / "testing" / "test_frame_mask")
    scipy.io.savemat(str(frames_ds / "scene.mat"), {"gt": cell([np.array([[1], [2]])])})
    with pytest.raises(DataError, match="1 entries"):
        open_dataset(frames_ds)


def test_frames_corrupt_mat(frames_ds):
    import shutil

    shutil.rmtree(frames_ds / "testing" / "test_frame_mask")
    (frames_ds / "gt.mat").write_bytes(b"\x00garbage" * 40)
    with pytest.raises(DataError, match="gt.mat"):
        open_dataset(frames_ds)


def test_natural_sort_in_frames(tmp_path):
    names = [f"{i}.JPG" if i == 10 else f"{i}.jpg" for i in range(1, 12)]
    write_frames(tmp_path / "testing" / "frames" / "v", 11, names=names)
    ds = open_dataset(tmp_path)
    assert [p.name for p in ds.test[0].frame_paths][:3] == ["1.jpg", "2.jpg", "3.jpg"]
    assert [p.name for p in ds.test[0].frame_paths][-2:] == ["10.JPG", "11.jpg"]
    assert ds.train == [] and ds.test[0].labels is None


def test_natural_key():
    names = ["img10.png", "img2.png", "IMG1.png", "img02b.png"]
    assert sorted(names, key=natural_key) == ["IMG1.png", "img2.png", "img02b.png", "img10.png"]
    assert sorted(["a1b", "a1b2", "a1"], key=natural_key) == ["a1", "a1b", "a1b2"]


# ---------------------------------------------------------------- videos


def test_video_folder_and_file(tmp_path):
    write_avi(tmp_path / "cams" / "cam10.avi", 4, fps=15)
    write_avi(tmp_path / "cams" / "cam2.avi", 3, fps=15)
    (tmp_path / "cams" / "notes.txt").write_text("ignored")
    ds = open_dataset(tmp_path / "cams")
    assert ds.layout == "videos" and ds.test == [] and ds.fps == 15
    assert [v.name for v in ds.train] == ["cam2", "cam10"]
    assert [v.num_frames() for v in ds.train] == [3, 4]
    single = open_dataset(tmp_path / "cams" / "cam2.avi")
    assert single.layout == "videos" and len(single.train) == 1
    assert detect_layout(tmp_path / "cams") == "videos"


def test_read_video_and_iter(tmp_path):
    path = write_avi(tmp_path / "v.avi", 6, fps=20)
    frames, fps = read_video(path)
    assert frames.shape == (6, VH, VW, 3) and fps == 20
    assert read_video(path, max_frames=2)[0].shape[0] == 2
    assert [i for i, _ in iter_video(path, max_frames=4)] == [0, 1, 2, 3]
    info = video_info(path)
    assert info == {"fps": 20.0, "n_frames": 6, "width": VW, "height": VH}


def test_truncated_video_returns_decodable_frames(tmp_path):
    path = tmp_path / "full.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 25, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(20):
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    frames, _ = read_video(cut)
    assert 0 < len(frames) < 20


def test_bad_videos(tmp_path):
    text = tmp_path / "fake.mp4"
    text.write_text("this is not a video\n" * 20)
    empty = tmp_path / "empty.avi"
    empty.touch()
    for path in (text, empty, tmp_path / "missing.avi"):
        with pytest.raises(DataError, match=path.name):
            read_video(path)
        with pytest.raises(DataError):
            iter_video(path)
        with pytest.raises(DataError):
            video_info(path)
    with pytest.raises(DataError, match="fake.mp4"):
        open_dataset(text)
    folder = tmp_path / "folder"
    folder.mkdir()
    text.rename(folder / "fake.mp4")
    with pytest.raises(DataError, match="fake.mp4"):
        open_dataset(folder)


# ---------------------------------------------------------------- images


def test_read_image_variants(tmp_path):
    gray16 = np.full((4, 5), 65535, np.uint16)
    gray16[0, 0] = 257 * 10
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    img = read_image(tmp_path / "g16.png")
    assert img.dtype == np.uint8 and img.shape == (4, 5) and img[0, 0] == 10 and img[1, 1] == 255
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 0] = 200
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    img = read_image(tmp_path / "a.png")
    assert img.shape == (4, 5, 3) and img[0, 0].tolist() == [200, 0, 0]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage bytes" * 3)
    with pytest.raises(DataError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    (tmp_path / "zero.jpg").touch()
    with pytest.raises(DataError, match="zero.jpg"):
        read_image(tmp_path / "zero.jpg")


# ---------------------------------------------------------------- roots and layouts


def test_root_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_dataset(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        open_dataset(empty)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="cannot recognise"):
        detect_layout(junk)
    with pytest.raises(DataError, match="unknown dataset layout"):
        open_dataset(junk, layout="ucf-crime")
    with pytest.raises(DataError, match="ped2"):
        open_dataset(junk, layout="ped2")


def test_layout_with_no_videos(tmp_path):
    (tmp_path / "training" / "frames").mkdir(parents=True)
    with pytest.raises(DataError, match="no training or test videos"):
        open_dataset(tmp_path)


def test_several_datasets_under_root(tmp_path, frames_ds):
    write_frames(tmp_path / "other" / "training" / "frames" / "x", 3, ext=".png")
    with pytest.raises(DataError, match="several datasets"):
        open_dataset(tmp_path)
