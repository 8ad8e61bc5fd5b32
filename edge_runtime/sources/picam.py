"""Raspberry Pi CSI cameras through picamera2 (optional; imported only when opened)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from edge_runtime.frames import Frame
from edge_runtime.sources.base import Source, SourceError, SourceOptions

DEFAULT_SIZE = (640, 480)
NOT_INSTALLED = (
    "picamera2 is not installed (on Raspberry Pi OS: sudo apt install python3-picamera2, "
    "and create the venv with --system-site-packages)"
)


def _even(value: int) -> int:
    # YUV420 halves the chroma planes, so the ISP wants even dimensions.
    return max(2, value - value % 2)


class PiCameraSource(Source):
    """The camera's low-resolution YUV420 stream, sized to the options, converted to BGR."""

    kind = "picamera2"
    live = True
    retry_on_error = True

    def __init__(self, camera_num: int = 0, options: SourceOptions | None = None) -> None:
        super().__init__(options)
        self.camera_num = camera_num
        self._camera: Any = None

    @classmethod
    def from_spec(cls, spec: str, options: SourceOptions) -> PiCameraSource | None:
        name, _, number = spec.partition(":")
        if name.lower() != "picamera2":
            return None
        if number and not number.isdigit():
            raise SourceError(f"source {spec!r}: camera number must be an integer")
        return cls(int(number or 0), options)

    @property
    def size(self) -> tuple[int, int]:
        width = self.options.width or DEFAULT_SIZE[0]
        height = self.options.height or DEFAULT_SIZE[1]
        return _even(width), _even(height)

    def open(self) -> None:
        self.close()
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceError(NOT_INSTALLED) from exc
        try:
            camera = Picamera2(self.camera_num)
        except Exception as exc:
            raise SourceError(f"{self.describe()}: cannot open ({exc})") from exc
        try:
            self._start(camera)
        except Exception as exc:
            camera.close()
            raise SourceError(f"{self.describe()}: cannot start ({exc})") from exc
        self._camera = camera

    def _start(self, camera: Any) -> None:
        controls = {"FrameRate": float(self.options.fps)} if self.options.fps else {}
        config = camera.create_video_configuration(
            main={"size": self.size},
            lores={"size": self.size, "format": "YUV420"},
            controls=controls,
        )
        camera.configure(config)
        camera.start()

    def read(self) -> Frame | None:
        if self._camera is None:
            raise SourceError(f"{self.describe()}: not open")
        try:
            yuv = self._camera.capture_array("lores")
        except Exception as exc:
            raise SourceError(f"{self.describe()}: read failed ({exc})") from exc
        return self._make_frame(yuv420_to_bgr(yuv, self.size[0]))

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is None:
            return
        try:
            camera.stop()
        finally:
            camera.close()

    def describe(self) -> str:
        return f"picamera2 camera {self.camera_num}"


def yuv420_to_bgr(yuv: np.ndarray, width: int) -> np.ndarray:
    """Planar YUV420 (I420) as picamera2 returns it → BGR, cropping the row-stride padding."""
    bgr = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420)
    return np.ascontiguousarray(bgr[:, :width])
