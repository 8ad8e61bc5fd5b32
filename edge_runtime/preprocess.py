"""The one function that turns pixels (or sensor readings) into an input tensor.

The converter imports this module to build its calibration and validation tensors, and the daemon
uses it on every frame, so what the model saw while being quantized is exactly what it sees on the
device. Images arrive as OpenCV gives them (BGR or single-channel gray, uint8).

For uint8 images the whole ``(pixel - mean) / std`` → quantize chain is folded into a 256-entry
lookup table per channel, computed once: one vectorised pass writes straight into the input tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

Color = Literal["RGB", "BGR", "GRAY"]
Resize = Literal["stretch", "letterbox"]
LETTERBOX_PAD = 114
DTYPES: dict[str, type[np.generic]] = {
    "int8": np.int8,
    "uint8": np.uint8,
    "float32": np.float32,
    "float16": np.float16,
}


@dataclass(frozen=True, slots=True)
class InputSpec:
    """How a model wants its input. Mirrors the manifest's ``input`` section."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    color: Color = "RGB"
    resize: Resize = "stretch"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 0.0
    zero_point: int = 0
    layout: str = "NHWC"

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 4

    @property
    def height(self) -> int:
        return int(self.shape[1])

    @property
    def width(self) -> int:
        return int(self.shape[2])

    @property
    def channels(self) -> int:
        return int(self.shape[3]) if self.is_image else 1

    @property
    def quantized(self) -> bool:
        return self.dtype in ("int8", "uint8") and self.scale > 0

    def with_quantization(self, dtype: str, scale: float, zero_point: int) -> InputSpec:
        return InputSpec(
            shape=self.shape, dtype=dtype, color=self.color, resize=self.resize,
            mean=self.mean, std=self.std, scale=scale, zero_point=zero_point, layout=self.layout,
        )

    def to_manifest(self) -> dict[str, object]:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "layout": self.layout,
            "color": self.color,
            "resize": self.resize,
            "mean": _scalar_or_list(self.mean),
            "std": _scalar_or_list(self.std),
            "quantization": {"scale": self.scale, "zero_point": self.zero_point},
        }

    @classmethod
    def from_manifest(cls, data: dict[str, object]) -> InputSpec:
        quant = data.get("quantization") or {}
        assert isinstance(quant, dict)
        shape = data["shape"]
        assert isinstance(shape, list | tuple)
        return cls(
            shape=tuple(int(v) for v in shape),
            dtype=str(data.get("dtype", "float32")),
            color=str(data.get("color", "RGB")),  # type: ignore[arg-type]
            resize=str(data.get("resize", "stretch")),  # type: ignore[arg-type]
            mean=as_tuple(data.get("mean", 0.0)),
            std=as_tuple(data.get("std", 1.0)),
            scale=float(quant.get("scale", 0.0) or 0.0),
            zero_point=int(quant.get("zero_point", 0) or 0),
            layout=str(data.get("layout", "NHWC")),
        )


@dataclass(frozen=True, slots=True)
class Letterbox:
    """Where the source image landed inside the model input, to map boxes back to [0, 1]."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    src_width: int
    src_height: int
    input_width: int   # the model input the boxes are normalised to
    input_height: int

    def to_source(self, box: np.ndarray) -> np.ndarray:
        """Map boxes ``[..., (x0, y0, x1, y1)]`` normalised to the model input → source [0, 1]."""
        return letterbox_to_source(box, self)


def letterbox_to_source(box: np.ndarray, lb: Letterbox, input_size: tuple[int, int] | None = None,
                        ) -> np.ndarray:
    """Undo a letterbox for boxes normalised to the model input (x0, y0, x1, y1)."""
    in_w, in_h = input_size if input_size is not None else (lb.input_width, lb.input_height)
    b = np.asarray(box, dtype=np.float32).copy()
    b[..., [0, 2]] = (b[..., [0, 2]] * in_w - lb.pad_x) / (lb.src_width * lb.scale_x)
    b[..., [1, 3]] = (b[..., [1, 3]] * in_h - lb.pad_y) / (lb.src_height * lb.scale_y)
    return np.clip(b, 0.0, 1.0)


def as_tuple(value: object) -> tuple[float, ...]:
    if isinstance(value, int | float):
        return (float(value),)
    if isinstance(value, str):
        return tuple(float(v) for v in value.replace(",", " ").split())
    if isinstance(value, Sequence):
        return tuple(float(v) for v in value)
    raise ValueError(f"expected a number or a list of numbers, got {value!r}")


def _scalar_or_list(values: tuple[float, ...]) -> float | list[float]:
    return values[0] if len(values) == 1 else list(values)


def _check_color(color: str, channels: int) -> None:
    # Caught here, once, rather than as an IndexError (or unwritten channels) on every frame.
    if color not in ("RGB", "BGR", "GRAY"):
        raise ValueError(f"unknown color {color!r}; expected RGB, BGR or GRAY")
    expected = 1 if color == "GRAY" else 3
    if channels != expected:
        raise ValueError(f"color {color} needs {expected} input channel(s) but the model "
                         f"input has {channels}")


def _per_channel(values: tuple[float, ...], channels: int, what: str) -> np.ndarray:
    if len(values) == 1:
        return np.full(channels, values[0], dtype=np.float64)
    if len(values) != channels:
        raise ValueError(f"{what} has {len(values)} values but the input has {channels} channels")
    return np.asarray(values, dtype=np.float64)


class Preprocessor:
    """Callable that writes one frame into a model input tensor (batch of 1).

    ``Preprocessor(spec)(image)`` returns an array of ``spec.shape`` and ``spec.dtype``. Pass
    ``out=`` (e.g. the interpreter's input buffer) to skip the final allocation.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.dtype = np.dtype(DTYPES.get(spec.dtype, np.float32))
        # a sensor window (1, T, C) takes its mean/std per channel along the last axis
        channels = spec.channels if spec.is_image else int(spec.shape[-1])
        if spec.is_image:
            _check_color(spec.color, channels)
        self._mean = _per_channel(spec.mean, channels, "mean")
        self._std = _per_channel(spec.std, channels, "std")
        if np.any(self._std == 0):
            raise ValueError("std must not be zero")
        self._lut = self._build_lut() if spec.is_image else None
        self._cv_lut = None if self._lut is None else _cv_table(self._lut)
        self.last_letterbox: Letterbox | None = None

    def _build_lut(self) -> np.ndarray:
        pixels = np.arange(256, dtype=np.float64)[:, None]
        values = (pixels - self._mean[None, :]) / self._std[None, :]
        return self._finish(values).T.copy()  # (channels, 256)

    def _finish(self, values: np.ndarray) -> np.ndarray:
        spec = self.spec
        if spec.quantized:
            info = np.iinfo(self.dtype)
            q = np.round(values / spec.scale) + spec.zero_point
            return np.clip(q, info.min, info.max).astype(self.dtype)
        return values.astype(self.dtype)

    def __call__(self, data: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if not self.spec.is_image:
            return self._window(data, out)
        image = self._fit(self._check_image(data))
        image = convert_color(image, self.spec.color)
        if out is None:
            out = np.empty(self.spec.shape, dtype=self.dtype)
        target = out.reshape(self.spec.height, self.spec.width, self.spec.channels)
        assert self._cv_lut is not None
        if image.dtype == np.uint8:
            _look_up(image, self._cv_lut, target)
        else:
            img = image.astype(np.float64)
            if img.ndim == 2:
                img = img[..., None]
            target[...] = self._finish((img - self._mean) / self._std)
        return out

    def _check_image(self, data: np.ndarray) -> np.ndarray:
        if not isinstance(data, np.ndarray) or data.ndim not in (2, 3) or data.size == 0:
            shape = getattr(data, "shape", None)
            raise ValueError(f"frame is not an image (shape {shape})")
        if data.ndim == 3 and data.shape[2] not in (1, 3, 4):
            raise ValueError(f"frame has {data.shape[2]} channels; expected 1, 3 or 4")
        if data.ndim == 3 and data.shape[2] == 1:
            data = data[..., 0]
        if data.ndim == 3 and data.shape[2] == 4:
            data = cv2.cvtColor(data, cv2.COLOR_BGRA2BGR)
        return data

    def _fit(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        th, tw = self.spec.height, self.spec.width
        if self.spec.resize == "letterbox":
            image, lb = letterbox(image, tw, th)
            self.last_letterbox = lb
            return image
        self.last_letterbox = Letterbox(tw / w, th / h, 0.0, 0.0, w, h, tw, th)
        if (h, w) == (th, tw):
            return image
        return cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR)

    def _window(self, data: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        window = np.asarray(data, dtype=np.float64)
        expected = int(np.prod(self.spec.shape))
        if window.size != expected:
            raise ValueError(
                f"sensor window has {window.size} values; the model takes {expected} "
                f"(shape {list(self.spec.shape)})"
            )
        window = window.reshape(self.spec.shape)
        mean = self._mean if self._mean.size == window.shape[-1] else self._mean[:1]
        std = self._std if self._std.size == window.shape[-1] else self._std[:1]
        values = self._finish((window - mean) / std)
        if out is None:
            return values
        out[...] = values
        return out


def _cv_table(lut: np.ndarray) -> np.ndarray:
    """The ``(channels, 256)`` table laid out for cv2.LUT: ``(1, 256)`` when every channel has the
    same table (about twice as fast as a table per channel), else ``(1, 256, channels)``. int8
    tables are kept as their bytes, which OpenCV writes in place into an int8 tensor."""
    table = lut[:1] if bool(np.all(lut == lut[:1])) else lut
    table = np.ascontiguousarray(table.T).reshape(1, 256, -1)
    if table.shape[2] == 1:
        table = table.reshape(1, 256)
    return table.view(np.uint8) if table.dtype == np.int8 else table


def _look_up(image: np.ndarray, lut: np.ndarray, target: np.ndarray) -> None:
    """``target[..., c] = lut[0, image[..., c], c]``; cv2.LUT is several times faster than NumPy
    fancy indexing here, and this runs on every frame."""
    plane = target[..., 0] if image.ndim == 2 else target
    table = lut[..., 0] if image.ndim == 2 and lut.ndim == 3 else lut
    if plane.dtype == np.int8:  # the same bytes; an int8 destination makes OpenCV allocate
        plane = plane.view(np.uint8)
    written = cv2.LUT(image, table, dst=plane)
    if written is not plane:  # OpenCV allocated its own output (a layout it cannot write into)
        plane[...] = written


def letterbox(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad to ``width`` x ``height``."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
    canvas_shape = (height, width, *image.shape[2:])
    canvas = np.full(canvas_shape, LETTERBOX_PAD, dtype=image.dtype)
    canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = resized
    return canvas, Letterbox(new_w / w, new_h / h, float(pad_x), float(pad_y), w, h, width, height)


def convert_color(image: np.ndarray, color: str) -> np.ndarray:
    """OpenCV order (BGR or gray) → the colour order the model expects."""
    if image.ndim == 2:
        return image if color == "GRAY" else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if color == "GRAY":
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if color == "RGB":
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def preprocess(data: np.ndarray, spec: InputSpec) -> np.ndarray:
    """One-shot form of :class:`Preprocessor`, for callers that handle a few items."""
    return Preprocessor(spec)(data)


def preprocess_batch(items: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Stack many items into one ``(N, ...)`` array (the converter's calibration tensors)."""
    pre = Preprocessor(spec)
    batch = np.empty((len(items), *spec.shape[1:]), dtype=pre.dtype)
    for i, item in enumerate(items):
        pre(item, out=batch[i:i + 1])
    return batch
