"""The daemon benchmark's assets, made once under a cache folder and reused: a MobileNetV2 int8
bundle converted by the real ``edge-convert`` CLI, calibration frames and a 640x480 video clip.

The model has random weights: accuracy means nothing here, only speed and memory do.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

MODEL_NAME = "mobilenet_v2"
PROFILE = "rpi4"
INPUT_SIZE = 224
CALIBRATION_FRAMES = 100
VIDEO_FRAMES = 300
VIDEO_SIZE = (640, 480)
VIDEO_FPS = 30.0
H264_SIZE = (1280, 720)
H264_BITRATE = 4_000_000
SENSOR_NOISE = 4.0  # grey levels, standard deviation

MAKE_KERAS = """
import sys
import keras
model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000)
model.save(sys.argv[1])
"""

@dataclass(frozen=True)
class Assets:
    bundle: Path
    video: Path  # the clip the runs read
    calibration: Path
    clips: dict[str, Path]  # every clip by name; ``video`` is one of them

    @property
    def model(self) -> Path:
        return self.bundle / "model.tflite"


def prepare_assets(cache: Path, rebuild: bool) -> Assets:
    """Everything the runs need, made once and reused from ``cache``."""
    if rebuild and cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    calibration = cache / "calibration"
    if not calibration.is_dir():
        _write_atomically_dir(calibration, lambda d: write_calibration(d, sample_images()))
    video = cache / "video.mp4"
    if not video.is_file():
        _write_atomically_file(video, lambda p: write_video(p, sample_images()))
    h264 = cache / "video-720p-h264.mp4"
    if not h264.is_file():
        _write_atomically_file(h264, lambda p: write_h264(p, sample_images()))
    keras_model = cache / f"{MODEL_NAME}.keras"
    if not keras_model.is_file():
        _write_atomically_file(keras_model, make_keras_model)
    bundle = find_bundle(cache / "bundles")
    if bundle is None:
        bundle = convert(keras_model, calibration, cache / "bundles")
    return Assets(bundle, video, calibration, {"vga-mpeg4": video, "720p-h264": h264})


@functools.cache
def sample_images() -> list[np.ndarray]:
    """scikit-learn's two photos, as OpenCV BGR images."""
    from sklearn.datasets import load_sample_images

    return [cv2.cvtColor(img, cv2.COLOR_RGB2BGR) for img in load_sample_images().images]


def _write_atomically_dir(target: Path, write: Callable[[Path], None]) -> None:
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write(partial)
    partial.rename(target)


def _write_atomically_file(target: Path, write: Callable[[Path], None]) -> None:
    partial = target.with_name(f"partial-{target.name}")
    partial.unlink(missing_ok=True)
    write(partial)
    partial.rename(target)


def write_calibration(folder: Path, images: list[np.ndarray]) -> None:
    """Crops at random places and scales, some mirrored, some darker or brighter."""
    rng = np.random.default_rng(0)
    for index in range(CALIBRATION_FRAMES):
        image = images[index % len(images)]
        h, w = image.shape[:2]
        side = int(rng.integers(h // 2, h + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = cv2.resize(image[y:y + side, x:x + side], (INPUT_SIZE, INPUT_SIZE))
        if index % 4 in (1, 3):
            crop = crop[:, ::-1]
        gain = float(rng.uniform(0.7, 1.3))
        crop = np.clip(crop.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"frame_{index:03d}.png"), crop)


def write_video(path: Path, images: list[np.ndarray]) -> None:
    """A 640x480 clip panning slowly across each photo in turn."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), VIDEO_FPS, VIDEO_SIZE)
    if not writer.isOpened():
        raise SystemExit("OpenCV cannot write mp4v video here")
    try:
        for crop in panned(images, 1.7, VIDEO_SIZE):
            writer.write(np.ascontiguousarray(crop))
    finally:
        writer.release()


def panned(images: list[np.ndarray], scale: float, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """VIDEO_FRAMES views of ``size`` panning slowly across each photo (enlarged ``scale``
    times) in turn: left to right, and down along half a cosine."""
    width, height = size
    per_image = VIDEO_FRAMES // len(images)
    for image in images:
        big = cv2.resize(image, None, fx=scale, fy=scale)
        span_x, span_y = big.shape[1] - width, big.shape[0] - height
        for step in range(per_image):
            t = step / max(1, per_image - 1)
            x, y = int(span_x * t), int(span_y * (0.5 - 0.5 * np.cos(np.pi * t)))
            yield big[y:y + height, x:x + width]


def write_h264(path: Path, images: list[np.ndarray]) -> None:
    """A 1280x720 H.264 clip panning across each photo in turn, as an IP camera records it:
    sensor noise, about 4 Mbit/s, no B-frames, a key frame every second (libx264, yuv420p)."""
    import av

    width, height = H264_SIZE
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(VIDEO_FPS))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = H264_BITRATE
        stream.options = {"preset": "fast", "x264-params": f"bframes=0:keyint={int(VIDEO_FPS)}"}
        rng = np.random.default_rng(0)
        for view in panned(images, 3.2, H264_SIZE):
            noise = rng.normal(0.0, SENSOR_NOISE, (height, width, 1)).astype(np.float32)
            crop = np.clip(view + noise, 0, 255).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(crop, format="bgr24")))
        container.mux(stream.encode(None))


def make_keras_model(path: Path) -> None:
    # In a child: TensorFlow takes ~600 MB and must not sit in the process measuring the daemon.
    subprocess.run([sys.executable, "-c", MAKE_KERAS, str(path)], check=True,
                   env=quiet_tensorflow_env())


def convert(model: Path, calibration: Path, out: Path) -> Path:
    """The real ``edge-convert convert`` CLI; the accuracy gate is opened wide (random weights)."""
    command = [
        tool("edge-convert"), "convert", str(model), "--profile", PROFILE,
        "--calibration", str(calibration), "--input-mean", "127.5", "--input-std", "127.5",
        "--task", "classification", "--max-accuracy-drop", "100", "--out", str(out),
    ]
    print(f"converting {model.name} for {PROFILE} (once; cached in {out})", file=sys.stderr)
    subprocess.run(command, check=True, env=quiet_tensorflow_env())
    bundle = find_bundle(out)
    if bundle is None:
        raise SystemExit(f"edge-convert wrote no bundle under {out}")
    return bundle


def find_bundle(folder: Path) -> Path | None:
    for manifest in sorted(folder.glob("*/manifest.json")):
        if (manifest.parent / "model.tflite").is_file():
            return manifest.parent
    return None


def quiet_tensorflow_env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed (pip install -e . in this environment)")
    return found

