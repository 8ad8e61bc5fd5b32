"""Calibration / validation data: image folders, .npz files, videos, sampling and splitting."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from converters.data import Dataset, load_dataset, split_holdout, stratified_sample
from converters.errors import ConvertError
from converters.samples import digit_to_image


@pytest.fixture(scope="module")
def real_digits() -> tuple[np.ndarray, np.ndarray]:
    """The first 200 of scikit-learn's real handwritten digits, as 48x48 BGR frames."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.stack([digit_to_image(img) for img in digits.images[:200]])
    return images, digits.target[:200].astype(np.int64)


def write_folder(root: Path, images: np.ndarray, targets: np.ndarray,
                 names: list[str] | None = None) -> list[str]:
    names = names or [f"digit_{i}" for i in range(10)]
    for i, (image, target) in enumerate(zip(images, targets, strict=True)):
        folder = root / names[int(target)]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:04d}.png"), image)
    return names


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()


def dataset(labels: list[int] | None, n: int | None = None) -> Dataset:
    count = n if n is not None else len(labels or [])
    items = [np.full((2, 2), i % 256, np.uint8) for i in range(count)]
    y = None if labels is None else np.asarray(labels, dtype=np.int64)
    return Dataset(items, y, None, "test", "0" * 64, [str(i) for i in range(count)])


# --- image folders ------------------------------------------------------------------------------


def test_class_folders_give_labels_in_sorted_folder_order(
        tmp_path: Path, real_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, targets = real_digits
    write_folder(tmp_path, images[:40], targets[:40])
    data = load_dataset(tmp_path)
    assert data.class_names == [f"digit_{i}" for i in range(10)]
    assert len(data) == 40 and data.labels is not None
    for ref, label, item in zip(data.refs, data.labels, data.items, strict=True):
        assert ref.startswith(f"digit_{label}/")
        original = images[int(Path(ref).stem)]
        np.testing.assert_array_equal(item, original)  # PNG is lossless
    assert data.source == f"folder {tmp_path}"


def test_labels_file_order_wins_over_folder_order(
        tmp_path: Path, real_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, targets = real_digits
    write_folder(tmp_path, images[:30], targets[:30])
    reversed_names = [f"digit_{i}" for i in reversed(range(10))]
    data = load_dataset(tmp_path, class_names=reversed_names)
    assert data.class_names == reversed_names and data.labels is not None
    for ref, label in zip(data.refs, data.labels, strict=True):
        assert ref.split("/")[0] == reversed_names[int(label)]


def test_a_class_folder_missing_from_the_labels_is_named(
        tmp_path: Path, real_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, targets = real_digits
    write_folder(tmp_path, images[:30], targets[:30])
    with pytest.raises(ConvertError, match=r"class folder\(s\) digit_9 are not in the labels"):
        load_dataset(tmp_path, class_names=[f"digit_{i}" for i in range(9)])


def test_a_folder_without_class_folders_is_unlabelled(
        tmp_path: Path, real_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = real_digits
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), images[i])
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_dataset(tmp_path)
    assert len(data) == 5 and data.labels is None and data.class_names is None
    assert data.refs == [f"{i}.jpg" for i in range(5)]


def test_unreadable_images_are_skipped_and_listed(
        tmp_path: Path, real_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, targets = real_digits
    write_folder(tmp_path, images[:10], targets[:10])
    (tmp_path / "digit_0" / "broken.png").write_bytes(b"not a png")
    data = load_dataset(tmp_path)
    assert len(data) == 10
    assert data.unreadable == ["digit_0/broken.png"]


def test_a_folder_of_only_unreadable_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for i in range(3):
        (tmp_path / "a" / f"{i}.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ConvertError, match=r"no readable samples \(3 unreadable files\)"):
        load_dataset(tmp_path)


def test_sixteen_bit_images_become_eight_bit(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    deep = np.array([[0, 256, 65535]], dtype=np.uint16).repeat(3, axis=0)
    cv2.imwrite(str(tmp_path / "c" / "deep.png"), deep)
    item = load_dataset(tmp_path).items[0]
    assert item.dtype == np.uint8
    np.testing.assert_array_equal(item[0], [0, 1, 255])


def test_the_checksum_follows_the_content(
        tmp_path: Path, real_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, targets = real_digits
    write_folder(tmp_path, images[:10], targets[:10])
    first = load_dataset(tmp_path).sha256
    assert load_dataset(tmp_path).sha256 == first
    victim = next((tmp_path / "digit_0").iterdir())
    image = cv2.imread(str(victim))
    assert image is not None
    cv2.imwrite(str(victim), 255 - image)
    assert load_dataset(tmp_path).sha256 != first


# --- .npz ---------------------------------------------------------------------------------------


def test_npz_with_integer_labels(tmp_path: Path, real_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, targets = real_digits
    path = tmp_path / "d.npz"
    np.savez(path, x=images[:50], y=targets[:50])
    data = load_dataset(path, class_names=[f"digit_{i}" for i in range(10)])
    assert len(data) == 50 and data.source == f"npz {path}"
    np.testing.assert_array_equal(data.labels, targets[:50])
    np.testing.assert_array_equal(data.items[7], images[7])


def test_npz_images_are_rgb_and_reach_preprocessing_in_opencv_order(tmp_path: Path) -> None:
    rgb = np.zeros((2, 4, 4, 3), np.uint8)
    rgb[..., 0] = 200  # red, as NumPy, PIL and Keras order it
    np.savez(tmp_path / "rgb.npz", x=rgb)
    data = load_dataset(tmp_path / "rgb.npz")
    assert data.rgb and data.subset([1]).rgb
    bgr = data.in_opencv_order()
    assert not bgr.rgb and bgr.items[0].flags["C_CONTIGUOUS"]
    assert bgr.items[0][0, 0].tolist() == [0, 0, 200]
    # A folder is read by OpenCV and is already in its order.
    cv2.imwrite(str(tmp_path / "frame.png"), bgr.items[0])
    folder = load_dataset(tmp_path)
    assert folder.in_opencv_order() is folder
    np.testing.assert_array_equal(folder.items[0], bgr.items[0])


def test_sensor_windows_in_an_npz_are_left_as_they_are(tmp_path: Path) -> None:
    windows = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)  # accelerometer x, y, z
    np.savez(tmp_path / "imu.npz", x=windows)
    data = load_dataset(tmp_path / "imu.npz")
    np.testing.assert_array_equal(data.items[1], windows[1])


def test_npz_one_hot_and_named_labels_become_indexes(tmp_path: Path) -> None:
    x = np.zeros((3, 4, 4), np.uint8)
    np.savez(tmp_path / "onehot.npz", x=x, y=np.eye(3)[[2, 0, 1]])
    np.testing.assert_array_equal(load_dataset(tmp_path / "onehot.npz").labels, [2, 0, 1])
    np.savez(tmp_path / "named.npz", x=x, y=np.array(["cat", "dog", "cat"]))
    named = load_dataset(tmp_path / "named.npz", class_names=["dog", "cat"])
    np.testing.assert_array_equal(named.labels, [1, 0, 1])


def test_npz_without_labels_is_unlabelled(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", x=np.ones((4, 3, 3), np.float32))
    data = load_dataset(tmp_path / "x.npz")
    assert data.labels is None and len(data) == 4


@pytest.mark.parametrize(("arrays", "class_names", "message"), [
    ({"images": np.zeros((2, 4, 4))}, None, r"no array 'x' \(found \['images'\]\)"),
    ({"x": np.zeros(5)}, None, "'x' must hold at least one sample"),
    ({"x": np.zeros((3, 4, 4)), "y": np.array([0, 1])}, None, "'y' has 2 labels for 3 samples"),
    ({"x": np.zeros((2, 4, 4)), "y": np.array([0.5, 1.0])}, None, "integer class indexes"),
    ({"x": np.zeros((2, 4, 4)), "y": np.array([0, 3])}, ["a", "b"],
     r"class indexes 0\.\.3 but there are 2 labels"),
    ({"x": np.zeros((2, 4, 4)), "y": np.array(["a", "zebra"])}, ["a", "b"],
     "labels zebra are not in labels.txt"),
    ({"x": np.zeros((2, 4, 4)), "y": np.array(["a", "b"])}, None, "give --labels"),
])
def test_bad_npz_files_are_refused_with_the_reason(
        tmp_path: Path, arrays: dict[str, np.ndarray], class_names: list[str] | None,
        message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(ConvertError, match=message):
        load_dataset(path, class_names=class_names)


def test_a_corrupt_npz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.npz"
    np.savez(path, x=np.zeros((10, 8, 8)))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ConvertError, match=r"cut\.npz: cannot read \.npz"):
        load_dataset(path)


# --- video --------------------------------------------------------------------------------------


def test_video_frames_are_read_in_order(tmp_path: Path,
                                        real_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = real_digits
    frames = [cv2.resize(img, (64, 64)) for img in images[:12]]
    write_video(tmp_path / "clip.mp4", frames)
    data = load_dataset(tmp_path / "clip.mp4")
    assert len(data) == 12 and data.labels is None
    assert data.refs == [str(i) for i in range(12)]
    assert data.items[0].shape == (64, 64, 3)
    # lossy codec: each frame resembles its own source far more than any other
    for i, item in enumerate(data.items):
        errors = [np.mean(np.abs(item.astype(float) - f.astype(float))) for f in frames]
        assert int(np.argmin(errors)) == i


def test_a_file_that_is_not_a_video_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.mp4"
    path.write_bytes(b"\x00" * 1000)
    with pytest.raises(ConvertError, match=r"fake\.mp4"):
        load_dataset(path)


# --- paths --------------------------------------------------------------------------------------


def test_missing_empty_and_unknown_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvertError, match="no readable samples"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(ConvertError, match=r"expected an image folder, an \.npz or a video file"):
        load_dataset(tmp_path / "data.csv")


# --- sampling -----------------------------------------------------------------------------------


def test_stratified_sample_spreads_evenly_over_classes() -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 5
    chosen = stratified_sample(dataset(labels), 15)
    picked = np.asarray(labels)[chosen]
    assert len(set(chosen.tolist())) == 15
    assert sorted(np.bincount(picked).tolist()) == [5, 5, 5]


def test_stratified_sample_takes_the_rest_from_larger_classes() -> None:
    labels = [0] * 50 + [1] * 2
    chosen = stratified_sample(dataset(labels), 10)
    assert np.bincount(np.asarray(labels)[chosen]).tolist() == [8, 2]


def test_asking_for_more_than_there_is_returns_everything_once() -> None:
    chosen = stratified_sample(dataset([0, 1, 1]), 10)
    assert sorted(chosen.tolist()) == [0, 1, 2]


def test_unlabelled_sample_is_unique_sorted_and_reproducible() -> None:
    data = dataset(None, n=100)
    first = stratified_sample(data, 20, seed=5)
    assert len(set(first.tolist())) == 20 and np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(first, stratified_sample(data, 20, seed=5))


def test_holdout_split_is_disjoint_and_keeps_every_class_on_both_sides() -> None:
    labels = [c for c in range(4) for _ in range(25)]
    keep, held = split_holdout(dataset(labels))
    assert len(held) == 20 and len(keep) == 80
    assert set(keep.tolist()).isdisjoint(held.tolist())
    assert sorted([*keep.tolist(), *held.tolist()]) == list(range(100))
    for side in (keep, held):
        assert set(np.asarray(labels)[side].tolist()) == {0, 1, 2, 3}


def test_holdout_is_capped_and_tiny_sets_keep_everything() -> None:
    _, held = split_holdout(dataset(None, n=10_000), limit=300)
    assert len(held) == 300
    keep, held = split_holdout(dataset([0, 1]))
    assert keep.tolist() == [0, 1] and held.size == 0


def test_subset_keeps_items_labels_and_refs_aligned() -> None:
    data = dataset([3, 1, 4, 1, 5])
    sub = data.subset([4, 0])
    assert sub.labels is not None and sub.labels.tolist() == [5, 3]
    assert sub.refs == ["4", "0"]
    assert [int(x[0, 0]) for x in sub.items] == [4, 0]


def test_the_converter_reads_a_folder_exactly_as_the_daemon_does(tmp_path: Path) -> None:
    from edge_runtime.sources import SourceOptions, open_source

    rng = np.random.default_rng(3)
    (tmp_path / "cat" / "nested").mkdir(parents=True)
    (tmp_path / "dog").mkdir()
    cv2.imwrite(str(tmp_path / "cat" / "a.PNG"), rng.integers(0, 256, (20, 30, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "cat" / "nested" / "b.png"),
                rng.integers(0, 65535, (20, 30), np.uint16))            # 16-bit gray
    cv2.imwrite(str(tmp_path / "dog" / "c.png"), rng.integers(0, 256, (20, 30, 4), np.uint8))
    cv2.imwrite(str(tmp_path / "dog" / ".hidden.png"), np.zeros((5, 5, 3), np.uint8))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    data = load_dataset(tmp_path, class_names=["cat", "dog"])
    source = open_source(str(tmp_path), SourceOptions())
    source.open()
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    assert data.refs == [f.ref for f in frames] == ["cat/a.PNG", "cat/nested/b.png", "dog/c.png"]
    assert [data.class_names[i] for i in data.labels] == [f.label for f in frames]  # type: ignore[index, union-attr]
    for item, frame in zip(data.items, frames, strict=True):
        assert item.dtype == frame.data.dtype == np.uint8
        assert np.array_equal(item, frame.data)
