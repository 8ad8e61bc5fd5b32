"""Small named types shared by every post-processor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.preprocess import Letterbox

SCORE_DECIMALS = 5
BOX_DECIMALS = 4
SIGNIFICANT_DIGITS = 6


@dataclass(frozen=True, slots=True)
class OutputInfo:
    """One model output as the manifest (or the interpreter) describes it.

    ``scale`` 0 means the tensor is not quantized.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale > 0

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass(slots=True)
class PostContext:
    """What a post-processor may need besides the output tensors."""

    letterbox: Letterbox | None = None
    input_tensor: np.ndarray | None = None  # float-space model input, for reconstruction anomaly


@dataclass(slots=True)
class Outcome:
    """What one inference produced, ready for the result payload."""

    task: str
    payload: dict[str, Any]
    top_label: str | None = None
    top_index: int | None = None
    top_score: float | None = None
    # The full class probability vector of a classifier, for the health monitor (not published).
    probabilities: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    index: int
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "score": self.score}


@dataclass(frozen=True, slots=True)
class Detection:
    """One object; ``box`` is ``(x_min, y_min, x_max, y_max)`` in source-image [0, 1]."""

    label: str
    index: int
    score: float
    box: tuple[float, float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "score": self.score,
                "box": list(self.box)}


Postprocess = Callable[[Sequence[np.ndarray], PostContext], Outcome]


def dequantize(array: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer tensor → float32 real values; a float tensor (``scale`` 0) is only cast."""
    values = np.asarray(array)
    if scale <= 0:
        return values.astype(np.float32, copy=False)
    return ((values.astype(np.float32) - np.float32(zero_point)) * np.float32(scale))


def dequantize_outputs(arrays: Sequence[np.ndarray], outputs: Sequence[OutputInfo],
                       ) -> list[np.ndarray]:
    if len(arrays) != len(outputs):
        raise ValueError(f"expected {len(outputs)} output tensors, got {len(arrays)}")
    return [dequantize(a, o.scale, o.zero_point) for a, o in zip(arrays, outputs, strict=True)]


def label_for(index: int, labels: Sequence[str]) -> str:
    return labels[index] if 0 <= index < len(labels) else str(index)


def round_score(value: float) -> float:
    return round(float(value), SCORE_DECIMALS)


def compact(value: float) -> float:
    """A float with a few significant digits, so payloads stay small whatever the magnitude."""
    number = float(value)
    if not np.isfinite(number):
        return number
    return float(f"{number:.{SIGNIFICANT_DIGITS}g}")
