"""JPEG frames decoded at a reduced scale when the model needs far fewer pixels than the frame has.

libjpeg scales by 1/2, 1/4 or 1/8 while decoding (OpenCV's ``IMREAD_REDUCED_*``): the inverse
DCT, upsampling and colour conversion then work on a fraction of the pixels, and the frame the
preprocessing resizes is that much smaller. The entropy decoding is done in full at any scale, so
the saving is largest for smooth scenes and modest for detailed, high-quality frames.

A scale is used only while the decoded frame keeps at least the model's input area and at least
:data:`MIN_SIDE` of each of its sides, so the resize to the model's input stays close to what a
full decode gives (results are normalised to the frame, so boxes still map to the full frame).
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

FACTORS = (8, 4, 2)
MIN_SIDE = 0.75
HEADER_BYTES = 65536   # the frame header comes before the image data, after the tables
_COLOR = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
          8: cv2.IMREAD_REDUCED_COLOR_8}
_GRAY = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
         4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
# Start-of-frame markers (baseline, extended, progressive, lossless and the arithmetic ones);
# 0xC4 (Huffman tables), 0xC8 and 0xCC are not frames.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SOI = b"\xff\xd8"


def reduction(frame: tuple[int, int], target: tuple[int, int] | None) -> int:
    """The largest of 8, 4, 2 that keeps a ``frame`` (width, height) decoded at that scale big
    enough for a model input of ``target`` (width, height); 1 when none does or no target."""
    if target is None:
        return 1
    (width, height), (tw, th) = frame, target
    for factor in FACTORS:
        w, h = -(-width // factor), -(-height // factor)   # libjpeg rounds up
        if w * h >= tw * th and w >= tw * MIN_SIDE and h >= th * MIN_SIDE:
            return factor
    return 1


def is_jpeg(data: bytes | np.ndarray) -> bool:
    head = data[:2] if isinstance(data, bytes) else bytes(np.asarray(data).ravel()[:2])
    return head == _SOI


def jpeg_header(data: bytes | np.ndarray) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG's start-of-frame segment; None if not found."""
    buf = data[:HEADER_BYTES] if isinstance(data, bytes) else \
        np.asarray(data).ravel()[:HEADER_BYTES].tobytes()
    if buf[:2] != _SOI:
        return None
    pos = 2
    while pos + 4 <= len(buf):
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:          # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", buf[pos + 2:pos + 4])
        if marker in _SOF and pos + 10 <= len(buf):
            height, width = struct.unpack(">HH", buf[pos + 5:pos + 9])
            return width, height, buf[pos + 9]
        if marker == 0xDA:          # start of scan before any frame header
            return None
        pos += 2 + length
    return None


class JpegDecoder:
    """Decodes JPEG frames for a model input of ``target`` (width, height), reduced where that
    pays; ``full`` turns the reduction off. Remembers the scale it used last (``factor``)."""

    def __init__(self, target: tuple[int, int] | None, *, full: bool = False) -> None:
        self.target = None if full else target
        self.factor = 1

    def __call__(self, data: bytes | np.ndarray, *, any_color: bool = True) -> np.ndarray | None:
        """The decoded image (BGR, or gray for a gray JPEG when ``any_color``); None if it is
        not a JPEG OpenCV can decode."""
        header = jpeg_header(data)
        if header is None:
            return None
        width, height, components = header
        self.factor = reduction((width, height), self.target)
        flags = _GRAY if any_color and components == 1 else _COLOR
        array = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else np.asarray(data)
        image = cv2.imdecode(array.reshape(-1), flags[self.factor])
        return None if image is None or image.size == 0 else np.asarray(image)
