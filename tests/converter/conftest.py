"""Material for the converter's end-to-end tests, built once per session from the real digits.

- ``digit_models``: the trained digits model also saved as legacy ``.h5`` and as a SavedModel
  directory, plus a SavedModel with an op TFLite has no kernel for.
- ``calibration_sets``: good and deliberately bad calibration data (real digits unless the point
  is that they are not).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

# TensorFlow runs in a child, as in the converter: the test process stays free of it.
SAVE_FORMATS = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
import tensorflow as tf

source, out = sys.argv[1], sys.argv[2]
model = keras.models.load_model(source, compile=False)
model.save(f"{out}/digits.h5")
model.export(f"{out}/digits_savedmodel", verbose=False)


class Determinant(tf.Module):
    # MatrixDeterminant has no TFLite builtin kernel: the model cannot become a .tflite.
    @tf.function(input_signature=[tf.TensorSpec([1, 28, 28, 1], tf.float32)])
    def __call__(self, x):
        det = tf.linalg.det(tf.reshape(x, [1, 28, 28]))
        return tf.nn.softmax(det[:, None] * tf.ones([1, 10]))


tf.saved_model.save(Determinant(), f"{out}/unconvertible")
"""


@dataclass(frozen=True)
class DigitModels:
    keras: Path
    h5: Path
    savedmodel: Path
    unconvertible: Path


@dataclass(frozen=True)
class CalibrationSets:
    train_npz: Path        # real train digits as uint8 BGR frames, y = class index
    black: Path            # class folders of all-black frames
    near_constant: Path    # class folders of grey frames with ±1 noise
    unit_range_npz: Path   # real digits already divided by 255
    few_no_nine: Path      # 9 real digits, one per class, digit_9 missing
    unreadable: Path       # class folders holding files that are not images
    empty: Path            # an empty folder
    wrong_classes: Path    # real digits in folders named after no label


def _read_split(folder: Path, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    images: list[np.ndarray] = []
    targets: list[int] = []
    for index, label in enumerate(labels):
        for path in sorted((folder / label).glob("*.png")):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            assert image is not None, path
            images.append(image)
            targets.append(index)
    return np.stack(images), np.asarray(targets, dtype=np.int64)


def _class_folders(root: Path, labels: list[str], frames_per_class: int,
                   make: object) -> Path:
    assert callable(make)
    for index, label in enumerate(labels):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(frames_per_class):
            cv2.imwrite(str(folder / f"{i:03d}.png"), make(index * frames_per_class + i))
    return root


@pytest.fixture(scope="session")
def digit_models(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> DigitModels:
    out = tmp_path_factory.mktemp("digit-models")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", SAVE_FORMATS, str(digits / "digits.keras"),
                           str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return DigitModels(digits / "digits.keras", out / "digits.h5", out / "digits_savedmodel",
                       out / "unconvertible")


@pytest.fixture(scope="session")
def calibration_sets(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> CalibrationSets:
    root = tmp_path_factory.mktemp("calibration")
    labels = (digits / "labels.txt").read_text().split()
    images, targets = _read_split(digits / "images" / "train", labels)
    np.savez(root / "train.npz", x=images, y=targets)
    np.savez(root / "unit.npz", x=images[:200].astype(np.float32) / 255.0, y=targets[:200])
    rng = np.random.default_rng(0)
    black = _class_folders(root / "black", labels, 3, lambda _: np.zeros((48, 48, 3), np.uint8))
    near = _class_folders(root / "near-constant", labels, 4, lambda _: (
        np.full((48, 48, 3), 127, np.uint8) + rng.integers(0, 3, (48, 48, 3), dtype=np.uint8)))
    few = root / "few"
    for index, label in enumerate(labels[:9]):
        (few / label).mkdir(parents=True)
        cv2.imwrite(str(few / label / "0.png"), images[np.flatnonzero(targets == index)[0]])
    unreadable = root / "unreadable"
    for label in labels[:2]:
        (unreadable / label).mkdir(parents=True)
        for i in range(3):
            (unreadable / label / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (root / "empty").mkdir()
    wrong = root / "wrong-classes"
    shutil.copytree(digits / "images" / "val" / labels[0], wrong / "zero")
    shutil.copytree(digits / "images" / "val" / labels[1], wrong / "one")
    return CalibrationSets(root / "train.npz", black, near, root / "unit.npz", few, unreadable,
                           root / "empty", wrong)
