"""Real sample material that works offline: scikit-learn's handwritten digits.

``python -m converters.samples digits DIR`` writes

- ``DIR/images/train/digit_N/*.png`` and ``DIR/images/val/digit_N/*.png`` (48x48 BGR PNGs of the
  1,797 real 8x8 digits, upscaled), a stratified 70/30 split;
- ``DIR/labels.txt``;
- ``DIR/digits.keras``: a small CNN (28x28 gray input, ``(pixel - 0) / 255``) trained on the train
  split through the same preprocessing function the daemon uses;
- ``DIR/digits.mp4``: a video of the validation digits (``--video``).

``python -m converters.samples textures DIR`` writes 96x96 patches of eight photographs that
scikit-image ships (``DIR/images/{train,val}/CLASS``, ``DIR/labels.txt``): a second real
labelled set, in colour, for the optimization benchmarks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.preprocess import InputSpec, preprocess_batch

IMAGE_SIZE = 48
INPUT_SPEC = InputSpec(shape=(1, 28, 28, 1), color="GRAY", mean=(0.0,), std=(255.0,))
LABELS = [f"digit_{i}" for i in range(10)]


def write_digit_images(root: Path, val_fraction: float = 0.3, seed: int = 0) -> None:
    """Write the digits as PNG files in class folders under ``root/train`` and ``root/val``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for cls in range(10):
        idx = np.flatnonzero(digits.target == cls)
        rng.shuffle(idx)
        n_val = round(len(idx) * val_fraction)
        for split, chosen in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = root / split / LABELS[cls]
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                cv2.imwrite(str(folder / f"{i:04d}.png"), digit_to_image(digits.images[i]))


def digit_to_image(pixels: np.ndarray) -> np.ndarray:
    gray = np.clip(pixels * (255.0 / 16.0), 0, 255).astype(np.uint8)
    big = cv2.resize(gray, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)


def load_split(folder: Path) -> tuple[list[np.ndarray], np.ndarray]:
    images: list[np.ndarray] = []
    targets: list[int] = []
    for cls, label in enumerate(LABELS):
        for path in sorted((folder / label).glob("*.png")):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                images.append(image)
            targets.append(cls)
    return images, np.asarray(targets, dtype=np.int64)


def train_digits_model(root: Path, epochs: int = 12, seed: int = 0) -> Path:
    """Train the sample CNN on ``root/images/train`` and save ``root/digits.keras``."""
    import keras

    keras.utils.set_random_seed(seed)
    images, y = load_split(root / "images" / "train")
    x = preprocess_batch(images, INPUT_SPEC)
    model = keras.Sequential([
        keras.Input(shape=INPUT_SPEC.shape[1:]),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ], name="digits")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    out = root / "digits.keras"
    model.save(out)
    return out


def write_video(root: Path, path: Path, frames_per_digit: int = 1, fps: float = 10.0,
                limit: int | None = None) -> Path:
    """A real mp4 of the validation digits, for video sources."""
    images, _ = load_split(root / "images" / "val")
    if limit is not None:
        images = images[:limit]
    size = 96
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (size, size))
    try:
        for image in images:
            frame = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
            for _ in range(frames_per_digit):
                writer.write(frame)
    finally:
        writer.release()
    return path


TEXTURES = ("astronaut", "brick", "chelsea", "coffee", "coins", "grass", "gravel", "moon")


def write_texture_images(root: Path, size: int = 96, train_per_class: int = 150,
                         val_per_class: int = 50, seed: int = 0) -> list[str]:
    """Real photographs shipped with scikit-image, cut into labelled patches: the class is the
    photo (a cat, bricks, gravel, coins, …). Training patches come from the left 70% of each
    photo and validation patches from the rest, so no validation pixel was trained on."""
    from skimage import data as photos

    rng = np.random.default_rng(seed)
    for label in TEXTURES:
        image = np.asarray(getattr(photos, label)())
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else \
            cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR)
        cut = int(image.shape[1] * 0.7)
        for split, region, count in (("train", image[:, :cut], train_per_class),
                                     ("val", image[:, cut:], val_per_class)):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                cv2.imwrite(str(folder / f"{i:04d}.png"), _patch(region, size, rng))
    return list(TEXTURES)


def _patch(region: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    height, width = region.shape[:2]
    side = int(rng.integers(min(48, width, height), min(128, width, height) + 1))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    patch = cv2.resize(region[top:top + side, left:left + side], (size, size),
                       interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    gain = rng.uniform(0.8, 1.2)
    return np.clip(patch.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def make_textures(root: Path, size: int = 96) -> Path:
    """``root/images/{train,val}/CLASS/*.png`` and ``root/labels.txt``."""
    if not (root / "images" / "val").is_dir():
        write_texture_images(root / "images", size=size)
    (root / "labels.txt").write_text("\n".join(TEXTURES) + "\n", encoding="utf-8")
    return root


def make_digits(root: Path, *, epochs: int = 12, video: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "images" / "val").is_dir():
        write_digit_images(root / "images")
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    model = root / "digits.keras"
    if not model.is_file():
        train_digits_model(root, epochs=epochs)
    if video and not (root / "digits.mp4").is_file():
        write_video(root, root / "digits.mp4")
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.samples",
                                     description="Write the digits sample data and model.")
    parser.add_argument("what", choices=["digits", "textures"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--no-video", action="store_true")
    args = parser.parse_args(argv)
    if args.what == "textures":
        print(make_textures(args.out))
        return 0
    model = make_digits(args.out, epochs=args.epochs, video=not args.no_video)
    print(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
