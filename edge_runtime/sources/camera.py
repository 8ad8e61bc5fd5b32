"""USB and other V4L2 cameras, by index (``0``) or device path (``/dev/video0``)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import cv2

from edge_runtime.frames import Frame
from edge_runtime.sources.base import Source, SourceError, SourceOptions
from edge_runtime.sources.decoders import fourcc
from edge_runtime.sources.jpeg import JpegDecoder, is_jpeg, reduction

_DEVICE_PATH = re.compile(r"^/dev/(video\d+|v4l/.+)$")


def _backend() -> int:
    v4l2 = getattr(cv2, "CAP_V4L2", None)
    return int(v4l2) if sys.platform.startswith("linux") and v4l2 is not None else cv2.CAP_ANY


class CameraSource(Source):
    """A local camera; width, height and fps from the options are requested from the driver."""

    kind = "camera"
    live = True
    retry_on_error = True

    def __init__(self, device: int | str, options: SourceOptions | None = None) -> None:
        super().__init__(options)
        self.device = device
        self._capture: Any = None
        self._jpeg: JpegDecoder | None = None

    @classmethod
    def from_spec(cls, spec: str, options: SourceOptions) -> CameraSource | None:
        if spec.isdigit():
            return cls(int(spec), options)
        if _DEVICE_PATH.match(spec):
            return cls(spec, options)
        return None

    @property
    def name(self) -> str:
        if isinstance(self.device, int) and sys.platform.startswith("linux"):
            return f"/dev/video{self.device}"
        return str(self.device)

    def open(self) -> None:
        self.close()
        if sys.platform.startswith("linux") and not Path(self.name).exists():
            raise SourceError(f"camera {self.name} not found")
        capture = cv2.VideoCapture(self.device, _backend())
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"camera {self.name}: cannot open")
        self._configure(capture)
        self._capture = capture

    def _configure(self, capture: Any) -> None:
        # One queued driver buffer keeps latency at a frame instead of a few.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        wanted = {
            cv2.CAP_PROP_FRAME_WIDTH: self.options.width,
            cv2.CAP_PROP_FRAME_HEIGHT: self.options.height,
            cv2.CAP_PROP_FPS: self.options.fps,
        }
        for prop, value in wanted.items():
            if value is not None:
                capture.set(prop, float(value))
        if self.options.width is None and self.options.height is None:
            self._closest_mode(capture)
        self._jpeg = self._raw_jpeg(capture)

    def _closest_mode(self, capture: Any) -> None:
        """Ask for the mode closest to the model's input (the driver picks the nearest it has);
        keep the camera's own mode if the nearest is smaller than the input on a side."""
        target = self.options.target
        if target is None:
            return
        size = _size(capture)
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, float(target[0]))
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, float(target[1]))
        got = _size(capture)
        if got[0] < target[0] or got[1] < target[1]:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, float(size[0]))
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, float(size[1]))
            got = size
        self.decoding["mode"] = f"{got[0]}x{got[1]}"

    def _raw_jpeg(self, capture: Any) -> JpegDecoder | None:
        """An MJPEG camera much larger than the model hands out its JPEG buffers, decoded here
        at a reduced scale (the driver's own decoding is always full scale)."""
        target = self.options.target
        if target is None or self.options.decode == "full" or fourcc(capture) != "MJPG":
            return None
        if reduction(_size(capture), target) == 1:
            return None
        if not capture.set(cv2.CAP_PROP_CONVERT_RGB, 0.0):
            return None
        self.decoding["jpeg_scale"] = "reduced"
        return JpegDecoder(target)

    def read(self) -> Frame | None:
        if self._capture is None:
            raise SourceError(f"camera {self.name}: not open")
        ok, image = self._capture.read()
        if ok and image is not None and self._jpeg is not None and image.ndim < 3 \
                and is_jpeg(image):
            image = self._jpeg(image)
        if not ok or image is None:
            raise SourceError(f"camera {self.name}: read failed")
        return self._make_frame(image)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
        self._capture = None

    def describe(self) -> str:
        return f"camera {self.name}"


def _size(capture: Any) -> tuple[int, int]:
    return (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
