"""Reduced JPEG decoding: decode CPU per frame, full against reduced, and the predictions on a
labelled set either way.

* decode CPU: 1280x720 MJPEG frames (the daemon benchmark's photos, panned, written by OpenCV's
  FFmpeg MJPEG writer, about 104 KiB a frame) for a 224x224 model input; full decoding
  through FFmpeg as ``cv2.VideoCapture`` gives it (what an MJPEG stream or file cost before),
  full decoding with libjpeg (``cv2.imdecode``), and the reduced decoding the daemon now uses
  (``JpegDecoder``: 1/4 here). CPU of this process, all threads, per frame, median of
  ``--rounds``; and the floor of any scaled decoding, libjpeg at 1/8, where the inverse DCT and
  colour conversion shrink to almost nothing and the entropy decoding, done in full at every
  scale, is what remains: full ÷ floor is the most that decoding less can save;
* predictions: the digits bundle (28x28 input, trained on real handwritten digits) on its
  539 validation images enlarged to 1280x720 and saved as JPEG: top-1 accuracy against the
  labels with full and with reduced decoding (1/8 here), and how many predictions agree.

    python benchmarks/jpeg.py [--rounds 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from assets import sample_images
from fleet import digits_bundle

from edge_runtime.model import open_model
from edge_runtime.sources.jpeg import JpegDecoder

SIZE = (1280, 720)
TARGET = (224, 224)
FRAMES = 60
QUALITY = 95  # asked of OpenCV's MJPEG writer; FFmpeg's own rate control decides (about 104 KiB)


def mjpeg_clip(path: Path, quality: int) -> list[bytes]:
    """An MJPEG .avi of 1280x720 frames panning across the photos; the JPEG of each frame as
    stored in it (the packets FFmpeg hands out), so every decoder decodes the same bytes."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, SIZE)
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality)
    for i in range(FRAMES):
        writer.write(cv2.resize(sample_images()[i % 2][:, i * 3:i * 3 + 560], SIZE))
    writer.release()
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    capture.set(cv2.CAP_PROP_FORMAT, -1)
    frames = []
    while True:
        ok, packet = capture.read()
        if not ok:
            break
        frames.append(np.asarray(packet).tobytes())
    capture.release()
    return frames


def cpu_per_frame(work: Callable[[], int]) -> float:
    start = time.process_time()
    count = work()
    return (time.process_time() - start) / count * 1e3


def decode_costs(clip: Path, frames: list[bytes]) -> dict[str, float]:
    def ffmpeg() -> int:
        capture = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
        count = 0
        while capture.read()[0]:
            count += 1
        capture.release()
        return count

    def libjpeg() -> int:
        for data in frames:
            cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        return len(frames)

    decoder = JpegDecoder(TARGET)

    def reduced() -> int:
        for data in frames:
            decoder(data)
        return len(frames)

    def floor() -> int:
        for data in frames:
            cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_8)
        return len(frames)

    return {"ffmpeg_full_ms": cpu_per_frame(ffmpeg), "libjpeg_full_ms": cpu_per_frame(libjpeg),
            "reduced_ms": cpu_per_frame(reduced), "factor": decoder.factor,
            "floor_ms": cpu_per_frame(floor)}


def predictions(folder: Path) -> dict[str, Any]:
    model = open_model(digits_bundle(), threads=1)
    labels = model.bundle.labels
    reduced = JpegDecoder((model.spec.width, model.spec.height))
    truth, full_top, reduced_top = [], [], []
    for path in sorted(folder.rglob("*.png")):
        big = cv2.resize(cv2.imread(str(path)), SIZE, interpolation=cv2.INTER_CUBIC)
        data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
        full, small = cv2.imdecode(data, cv2.IMREAD_COLOR), reduced(data.tobytes())
        assert full is not None and small is not None
        truth.append(path.parent.name)
        full_top.append(model.run(full)[0].top_label)
        reduced_top.append(model.run(small)[0].top_label)
    model.close()
    n = len(truth)
    return {"images": n, "labels": len(labels), "factor": reduced.factor,
            "accuracy_full": sum(t == p for t, p in zip(truth, full_top, strict=True)) / n,
            "accuracy_reduced": sum(t == p for t, p in zip(truth, reduced_top, strict=True)) / n,
            "agreement": sum(a == b for a, b in zip(full_top, reduced_top, strict=True)) / n}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"decode": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for quality in (QUALITY,):
            clip = Path(tmp) / f"clip-{quality}.avi"
            frames = mjpeg_clip(clip, quality)
            rounds = [decode_costs(clip, frames) for _ in range(args.rounds)]
            median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
            median["kib_per_frame"] = sum(map(len, frames)) / len(frames) / 1024
            report["decode"][quality] = median
            print(f"1280x720 MJPEG ({median['kib_per_frame']:.0f} KiB/frame), "
                  f"CPU per frame: FFmpeg full {median['ffmpeg_full_ms']:.2f} ms, libjpeg full "
                  f"{median['libjpeg_full_ms']:.2f} ms, reduced 1/{median['factor']:.0f} "
                  f"{median['reduced_ms']:.2f} ms → {median['ffmpeg_full_ms'] / median['reduced_ms']:.1f}"
                  f"x / {median['libjpeg_full_ms'] / median['reduced_ms']:.1f}x less")
            print(f"  floor of scaled decoding (1/8: the entropy decoding, done in full at every "
                  f"scale) {median['floor_ms']:.2f} ms → at most "
                  f"{median['ffmpeg_full_ms'] / median['floor_ms']:.1f}x less than FFmpeg full")
    folder = digits_bundle().parent.parent / "digits" / "images" / "val"
    report["predictions"] = p = predictions(folder)
    print(f"digits, {p['images']} labelled images at 1280x720 JPEG: accuracy full "
          f"{p['accuracy_full']:.1%}, reduced 1/{p['factor']} {p['accuracy_reduced']:.1%}, "
          f"same top-1 {p['agreement']:.1%}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
