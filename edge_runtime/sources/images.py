"""A folder of images (class sub-folders give labels), or a single image file.

:func:`list_images` and :func:`decode_image` are also how the converter reads calibration and
validation folders: the same suffixes, the same recursion, the same colour handling, so that
calibration sees what the board will see.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.frames import Frame
from edge_runtime.sources.base import Pacer, Source, SourceError, SourceOptions, local_path
from edge_runtime.sources.jpeg import JpegDecoder

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({
    ".bmp", ".dib", ".jpg", ".jpeg", ".jpe", ".jp2", ".png", ".webp", ".pbm", ".pgm", ".ppm",
    ".pxm", ".pnm", ".tif", ".tiff", ".sr", ".ras",
})


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Every image under ``folder`` (recursive, hidden entries skipped), sorted by path parts."""
    found = [
        path for path in folder.rglob("*")
        if is_image_file(path) and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


def label_for(relative: Path) -> str | None:
    """The class an image belongs to: its first sub-folder, None for images at the top."""
    return relative.parts[0] if len(relative.parts) > 1 else None


JPEG_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe"})


def read_image(path: Path, jpeg: JpegDecoder | None = None) -> np.ndarray | None:
    """An image as OpenCV gives it (BGR, or gray for gray files), 8-bit; None if unreadable.
    A JPEG is decoded by ``jpeg`` when given (at a reduced scale where that pays)."""
    if jpeg is not None and path.suffix.lower() in JPEG_SUFFIXES:
        try:
            decoded = jpeg(path.read_bytes())
        except OSError:
            return None
        if decoded is not None:
            return decoded
    image = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR)
    if image is None or image.size == 0:
        return None
    return np.asarray(image)


def decode_image(raw: bytes) -> np.ndarray | None:
    """The bytes of an image file, decoded exactly as :func:`read_image` reads the file."""
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_ANYCOLOR)
    if image is None or image.size == 0:
        return None
    return np.asarray(image)


class ImageFolderSource(Source):
    """Each image once, in sorted order; ``loop`` starts over. Corrupt files are skipped."""

    kind = "images"

    def __init__(self, path: Path, options: SourceOptions | None = None) -> None:
        super().__init__(options)
        self.path = path
        self.live = self.options.fps is not None
        self._pacer = Pacer(self.options.fps, self._interrupted)
        self._files: list[Path] = []
        self._bad: set[Path] = set()
        self._position = 0
        self._delivered_this_pass = False
        self._jpeg = JpegDecoder(self.options.target, full=self.options.decode == "full")

    @classmethod
    def from_spec(cls, spec: str, options: SourceOptions) -> ImageFolderSource | None:
        path = local_path(spec, options)
        if path.is_dir() or (path.is_file() and is_image_file(path)):
            return cls(path, options)
        return None

    @property
    def root(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    def open(self) -> None:
        if self.path.is_dir():
            self._files = list_images(self.path)
        elif self.path.is_file():
            self._files = [self.path]
        else:
            raise SourceError(f"image folder {self.path} not found")
        if not self._files:
            raise SourceError(f"image folder {self.path} has no images")
        self._position = 0
        self._delivered_this_pass = False

    def read(self) -> Frame | None:
        # Paced, an image is decoded at its tick, as a camera's frame would be (see the video
        # source); an unreadable one is skipped without waiting for another tick.
        if not self._pacer.wait():
            return None
        while True:
            path = self._next_path()
            if path is None:
                return None
            image = read_image(path, self._jpeg)
            if image is None:
                self._skip(path)
                continue
            self._delivered_this_pass = True
            self.decoding["jpeg_scale"] = f"1/{self._jpeg.factor}"
            relative = path.relative_to(self.root)
            return self._make_frame(image, ref=relative.as_posix(), label=label_for(relative))

    def _next_path(self) -> Path | None:
        while True:
            if self._position >= len(self._files):
                # A pass that delivered nothing would loop forever without progress.
                if not self.options.loop or not self._delivered_this_pass:
                    return None
                self._position = 0
                self._delivered_this_pass = False
            path = self._files[self._position]
            self._position += 1
            if path not in self._bad:
                return path

    def _skip(self, path: Path) -> None:
        self._bad.add(path)
        self.unreadable += 1
        log.warning("skipping unreadable image %s", path)

    def close(self) -> None:
        self._position = len(self._files)

    def describe(self) -> str:
        return f"images {self.path}"
