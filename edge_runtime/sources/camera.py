"""USB and other V4L2 cameras, by index (``0``) or device path (``/dev/video0``)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import cv2

from edge_runtime.frames import Frame
from edge_runtime.sources.base import Source, SourceError, SourceOptions

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

    def read(self) -> Frame | None:
        if self._capture is None:
            raise SourceError(f"camera {self.name}: not open")
        ok, image = self._capture.read()
        if not ok or image is None:
            raise SourceError(f"camera {self.name}: read failed")
        return self._make_frame(image)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
        self._capture = None

    def describe(self) -> str:
        return f"camera {self.name}"
