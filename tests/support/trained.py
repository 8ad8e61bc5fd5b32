"""Models trained here on real images, once per test session, for the gate and detection tests.

- ``third_party``: a BatchNorm CNN from "elsewhere", saved as legacy ``.h5``: grayscale 64x64,
  inputs in [-1, 1], logits for 7 classes (patches of scikit-image's photographs); 40 real
  patches it never saw to calibrate with, and 56 more to check it on.
- ``detector``: a small grid detector with one YOLOv8-layout output ``[1, 4 + 3, 64]`` (centre,
  size, three class scores per cell of an 8x8 grid) trained on shapes pasted onto crops of real
  photographs; a copy whose box coordinates are in input pixels in the same tensor as the scores
  (quantized with one scale, the scores collapse); ground truth as YOLO ``.txt`` beside the images.

TensorFlow runs in one child process (as in the converter): the test process stays free of it.
Data are made here with NumPy and OpenCV and preprocessed by ``edge_runtime.preprocess``.
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

from edge_runtime.preprocess import InputSpec, preprocess_batch
from support.daemon import edge_convert

CLASSIFIER_SPEC = InputSpec(shape=(1, 64, 64, 1), color="GRAY", mean=(127.5,), std=(127.5,))
CLASSIFIER_CLASSES = ("brick", "grass", "gravel", "moon", "coins", "camera", "rocket")
DETECTOR_SPEC = InputSpec(shape=(1, 64, 64, 3), color="RGB", mean=(0.0,), std=(255.0,))
SHAPES = ("circle", "square", "triangle")
GRID = 8
DETECTOR_EPOCHS = 16
CLASSIFIER_EPOCHS = 8
DETECTION_FLAGS = ("--input-mean", "0", "--input-std", "255", "--color", "RGB",
                   "--decoder", "yolov8", "--samples", "200")
IMAGE = 128
BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina",
               "hubble_deep_field", "cat")

TRAIN = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from pathlib import Path
import numpy as np
import keras
from keras import layers

out = Path(sys.argv[1])
keras.utils.set_random_seed(3)

# --- the "third-party" classifier: BatchNorm CNN, logits, saved as legacy HDF5
data = np.load(out / "classifier-train.npz")
x, y = data["x"], data["y"]
model = keras.Sequential([
    keras.Input(shape=x.shape[1:]),
    layers.Conv2D(16, 3, padding="same", use_bias=False), layers.BatchNormalization(momentum=0.9),
    layers.ReLU(), layers.MaxPooling2D(),
    layers.Conv2D(32, 3, padding="same", use_bias=False), layers.BatchNormalization(momentum=0.9),
    layers.ReLU(), layers.MaxPooling2D(),
    layers.Conv2D(32, 3, padding="same", use_bias=False), layers.BatchNormalization(momentum=0.9),
    layers.ReLU(), layers.GlobalAveragePooling2D(),
    layers.Dense(int(y.max()) + 1),
], name="vendor_cnn")
model.compile(optimizer="adam", metrics=["accuracy"],
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, epochs=int(sys.argv[3]), batch_size=32, verbose=0)
model.save(out / "vendor_cnn.h5")

# --- the grid detector: one [1, 4 + C, N] output, YOLOv8 layout
data = np.load(out / "detector-train.npz")
x, y = data["x"], data["y"]
grid, classes = int(data["grid"]), y.shape[1] - 4
cells = np.stack(np.meshgrid(np.arange(grid), np.arange(grid)), axis=-1) / grid  # (i, j) -> (j, i)


def head(pixels):
    inputs = keras.Input(shape=x.shape[1:])
    h = inputs
    for filters in (16, 32, 48):
        h = layers.Conv2D(filters, 3, padding="same", use_bias=False)(h)
        h = layers.ReLU()(layers.BatchNormalization(momentum=0.9)(h))
        h = layers.MaxPooling2D()(h)
    h = layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    xy = layers.Conv2D(2, 1, activation="sigmoid", name="xy")(h)
    xy = layers.Normalization(axis=(1, 2, 3), mean=cells, variance=np.full_like(cells, 1 / grid ** 2),
                              invert=True, name="grid")(xy)
    wh = layers.Conv2D(2, 1, activation="sigmoid", name="wh")(h)
    boxes = layers.Concatenate()([xy, wh])
    if pixels:
        boxes = layers.Rescaling(float(x.shape[1]), name="to_pixels")(boxes)
    scores = layers.Conv2D(classes, 1, activation="sigmoid", name="scores")(h)
    table = layers.Reshape((grid * grid, 4 + classes))(layers.Concatenate()([boxes, scores]))
    return keras.Model(inputs, layers.Permute((2, 1))(table), name="grid_detector")


def loss(y_true, y_pred):
    from keras import ops
    present = ops.max(y_true[:, 4:, :], axis=1)
    box = ops.sum(ops.abs(y_true[:, :4, :] - y_pred[:, :4, :]) * present[:, None, :])
    box = box / (ops.sum(present) + 1.0)
    p = ops.clip(y_pred[:, 4:, :], 1e-6, 1 - 1e-6)
    t = y_true[:, 4:, :]
    bce = -(4.0 * t * ops.log(p) + (1 - t) * ops.log(1 - p))
    return 5.0 * box + ops.mean(bce)


model = head(False)
model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss)
model.fit(x, y, epochs=int(sys.argv[2]), batch_size=32, verbose=0)
for start in range(0, len(x), 64):          # refresh the moving statistics once more
    model(x[start:start + 64], training=True)
model.save(out / "detector.keras")
pixels = head(True)
pixels.set_weights(model.get_weights())
pixels.save(out / "detector_pixels.keras")
(out / "trained.json").write_text(json.dumps({"ok": True}))
"""


@dataclass(frozen=True)
class ThirdParty:
    model: Path            # vendor_cnn.h5
    calibration: Path      # 40 real patches in class folders, none seen in training
    other: Path            # 56 more, for verify
    labels: Path


@dataclass(frozen=True)
class Detector:
    model: Path            # detector.keras: coordinates normalised, one [1, 7, 64] output
    pixels: Path           # detector_pixels.keras: coordinates in input pixels, same tensor
    train: Path            # images with YOLO .txt beside them (calibration)
    val: Path              # held-apart images with YOLO .txt beside them
    labels: Path


@dataclass(frozen=True)
class Trained:
    third_party: ThirdParty
    detector: Detector


def _photo(name: str) -> np.ndarray:
    from skimage import data as photos

    image = np.asarray(getattr(photos, name)())
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR)


def _crop(photo: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    height, width = photo.shape[:2]
    side = int(rng.integers(min(96, height, width), min(256, height, width) + 1))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    return cv2.resize(photo[top:top + side, left:left + side], (size, size),
                      interpolation=cv2.INTER_AREA)


def _draw(image: np.ndarray, cls: int, box: tuple[int, int, int, int],
          rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = box
    color = tuple(int(v) for v in rng.integers(0, 256, 3))
    color = color if max(color) - min(color) > 80 else (int(rng.integers(0, 60)), 40, 230)
    outline = (20, 20, 20)
    if SHAPES[cls] == "circle":
        centre, radius = ((x0 + x1) // 2, (y0 + y1) // 2), (x1 - x0) // 2
        cv2.circle(image, centre, radius, color, -1, cv2.LINE_AA)
        cv2.circle(image, centre, radius, outline, 2, cv2.LINE_AA)
    elif SHAPES[cls] == "square":
        cv2.rectangle(image, (x0, y0), (x1, y1), color, -1)
        cv2.rectangle(image, (x0, y0), (x1, y1), outline, 2)
    else:
        points = np.array([[(x0 + x1) // 2, y0], [x1, y1], [x0, y1]], np.int32)
        cv2.fillPoly(image, [points], color, cv2.LINE_AA)
        cv2.polylines(image, [points], True, outline, 2, cv2.LINE_AA)


def scene(photo: np.ndarray, rng: np.random.Generator,
          ) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """One image: a crop of a real photo with 1-3 shapes in different grid cells, and their
    boxes as (class, cx, cy, w, h) normalised."""
    image = _crop(photo, rng, IMAGE)
    objects: list[tuple[int, float, float, float, float]] = []
    taken: set[tuple[int, int]] = set()
    for _ in range(int(rng.integers(1, 4))):
        side = int(rng.integers(28, 52))
        x0, y0 = (int(v) for v in rng.integers(2, IMAGE - side - 2, 2))
        cx, cy = (x0 + side / 2) / IMAGE, (y0 + side / 2) / IMAGE
        cell = (int(cy * GRID), int(cx * GRID))
        boxes = [(c[1] * IMAGE - c[3] * IMAGE / 2, c[2] * IMAGE - c[4] * IMAGE / 2,
                  c[1] * IMAGE + c[3] * IMAGE / 2, c[2] * IMAGE + c[4] * IMAGE / 2)
                 for c in objects]
        overlaps = any(x0 < b[2] + 2 and b[0] < x0 + side + 2 and y0 < b[3] + 2 and
                       b[1] < y0 + side + 2 for b in boxes)
        if cell in taken or overlaps:
            continue
        taken.add(cell)
        cls = int(rng.integers(0, len(SHAPES)))
        _draw(image, cls, (x0, y0, x0 + side, y0 + side), rng)
        objects.append((cls, cx, cy, side / IMAGE, side / IMAGE))
    return image, objects


def write_scenes(folder: Path, count: int, region: slice, seed: int) -> None:
    """``count`` scenes as PNGs with YOLO ``.txt`` files beside them; backgrounds come from
    ``region`` (a column range) of each photo, so training and validation never share pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [_photo(name) for name in BACKGROUNDS]
    photos = [p[:, int(p.shape[1] * (region.start or 0)):int(p.shape[1] * (region.stop or 1))]
              for p in photos]
    for i in range(count):
        image, objects = scene(photos[i % len(photos)], rng)
        cv2.imwrite(str(folder / f"{i:04d}.png"), image)
        (folder / f"{i:04d}.txt").write_text("".join(
            f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in objects))


def detection_targets(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and ``[4 + C, N]`` targets (the box and a one-hot class in the cell that
    holds the object's centre) for every scene in ``folder``."""
    images, targets = [], []
    for path in sorted(folder.glob("*.png")):
        images.append(cv2.imread(str(path)))
        target = np.zeros((4 + len(SHAPES), GRID * GRID), np.float32)
        for line in path.with_suffix(".txt").read_text().splitlines():
            cls, cx, cy, w, h = (float(v) for v in line.split())
            cell = int(cy * GRID) * GRID + int(cx * GRID)
            target[:4, cell] = (cx, cy, w, h)
            target[4 + int(cls), cell] = 1.0
        targets.append(target)
    return preprocess_batch(images, DETECTOR_SPEC), np.stack(targets)


def write_patches(root: Path, train_per_class: int, val_per_class: int, seed: int) -> None:
    """Patches of real photographs, the class being the photo; training patches come from the
    left 70% of each photo and the others from the rest, so they never share a pixel."""
    rng = np.random.default_rng(seed)
    for label in CLASSIFIER_CLASSES:
        photo = _photo(label)
        cut = int(photo.shape[1] * 0.7)
        for split, region, count in (("train", photo[:, :cut], train_per_class),
                                     ("val", photo[:, cut:], val_per_class)):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            height, width = region.shape[:2]
            for i in range(count):
                side = int(rng.integers(min(48, width, height), min(128, width, height) + 1))
                top = int(rng.integers(0, height - side + 1))
                left = int(rng.integers(0, width - side + 1))
                patch = cv2.resize(region[top:top + side, left:left + side], (96, 96),
                                   interpolation=cv2.INTER_AREA)
                gain = rng.uniform(0.8, 1.2)
                patch = np.clip(patch.astype(np.float32) * gain, 0, 255).astype(np.uint8)
                cv2.imwrite(str(folder / f"{i:04d}.png"), patch)


def _classifier_data(root: Path) -> ThirdParty:
    patches = root / "patches"
    write_patches(patches, train_per_class=120, val_per_class=14, seed=5)
    images, y = [], []
    for index, label in enumerate(CLASSIFIER_CLASSES):
        for path in sorted((patches / "train" / label).glob("*.png")):
            images.append(cv2.imread(str(path)))
            y.append(index)
    np.savez(root / "classifier-train.npz", x=preprocess_batch(images, CLASSIFIER_SPEC),
             y=np.asarray(y))
    calibration, other = root / "calibration", root / "other"
    for index, label in enumerate(CLASSIFIER_CLASSES):
        files = sorted((patches / "val" / label).glob("*.png"))
        keep = 6 if index < 5 else 5            # 5 x 6 + 2 x 5 = 40 calibration images
        for target, chosen in ((calibration, files[:keep]), (other, files[keep:])):
            (target / label).mkdir(parents=True)
            for path in chosen:
                shutil.copy(path, target / label / path.name)
    labels = root / "labels.txt"
    labels.write_text("\n".join(CLASSIFIER_CLASSES) + "\n")
    return ThirdParty(root / "vendor_cnn.h5", calibration, other, labels)


def _detector_data(root: Path) -> Detector:
    train, val = root / "scenes-train", root / "scenes-val"
    write_scenes(train, 1600, slice(0.0, 0.7), seed=11)
    write_scenes(val, 120, slice(0.7, 1.0), seed=12)
    x, y = detection_targets(train)
    np.savez(root / "detector-train.npz", x=x, y=y, grid=GRID)
    labels = root / "shapes.txt"
    labels.write_text("\n".join(SHAPES) + "\n")
    return Detector(root / "detector.keras", root / "detector_pixels.keras", train, val, labels)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("trained")
    third_party, detector = _classifier_data(root), _detector_data(root)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", TRAIN, str(root), str(DETECTOR_EPOCHS),
                           str(CLASSIFIER_EPOCHS)], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("classifier-train.npz", "detector-train.npz"):
        (root / name).unlink()
    return Trained(third_party, detector)


@pytest.fixture(scope="session")
def detector_convert(trained: Trained, tmp_path_factory: pytest.TempPathFactory,
                     ) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The detector converted for rpi4 by the real CLI, verified on boxes (mAP gate, 5 points)."""
    out = tmp_path_factory.mktemp("detector-bundles")
    d = trained.detector
    result = edge_convert("convert", d.model, "--profile", "rpi4", "--calibration", d.train,
                          "--validation", d.val, "--labels", d.labels, *DETECTION_FLAGS,
                          "--decoder-param", "score_threshold=0.25", "--max-accuracy-drop", "5",
                          "--name", "shapes", "--out", out)
    return result, out / "shapes-rpi4"
