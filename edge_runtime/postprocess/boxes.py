"""Detection decoder interface and box geometry in NumPy (conversions, IoU, NMS, letterbox)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edge_runtime.postprocess.types import PostContext
from edge_runtime.preprocess import Letterbox, letterbox_to_source


@dataclass(frozen=True, slots=True)
class Candidates:
    """Decoder output: ``boxes`` (N, 4) x0, y0, x1, y1 normalised to the model input."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def take(self, indices: np.ndarray) -> Candidates:
        return Candidates(self.boxes[indices], self.scores[indices], self.classes[indices])


@dataclass(frozen=True, slots=True)
class DetectionSettings:
    """Parameters every detection decoder shares."""

    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100
    input_size: tuple[int, int] | None = None  # (width, height) of the model input


Decoder = Callable[[Sequence[np.ndarray], PostContext], Candidates]


def yxyx_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float32)[..., [1, 0, 3, 2]]


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float32)
    half_w, half_h = b[..., 2] / 2, b[..., 3] / 2
    return np.stack([b[..., 0] - half_w, b[..., 1] - half_h,
                     b[..., 0] + half_w, b[..., 1] + half_h], axis=-1)


def area(boxes: np.ndarray) -> np.ndarray:
    return np.maximum(boxes[..., 2] - boxes[..., 0], 0) * np.maximum(boxes[..., 3] - boxes[..., 1], 0)


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) against many (N, 4)."""
    inter = _intersection(box, others.T)
    union = area(box) + area(others) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _intersection(box: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Intersection areas of one box with boxes given as columns (x0, y0, x1, y1)."""
    width = np.minimum(box[2], columns[2]) - np.maximum(box[0], columns[0])
    height = np.minimum(box[3], columns[3]) - np.maximum(box[1], columns[1])
    return np.maximum(width, 0) * np.maximum(height, 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int,
        ) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, best score first."""
    order = np.argsort(-scores, kind="stable")
    ranked = np.asarray(boxes, dtype=np.float64)[order]
    columns = np.ascontiguousarray(ranked.T)
    areas = area(ranked)
    alive = np.arange(order.size)
    keep: list[int] = []
    while alive.size and len(keep) < max_keep:
        best, rest = alive[0], alive[1:]
        keep.append(int(order[best]))
        inter = _intersection(ranked[best], columns[:, rest])
        # inter / union <= threshold, without dividing (a zero union keeps the box)
        alive = rest[inter <= iou_threshold * (areas[best] + areas[rest] - inter)]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(candidates: Candidates, iou_threshold: float, max_keep: int) -> Candidates:
    """Class-aware NMS: boxes of different classes never suppress each other.

    Shifting each class into its own disjoint region lets one NMS pass do all classes.
    """
    if not len(candidates):
        return candidates
    boxes = candidates.boxes.astype(np.float64)
    span = float(np.abs(boxes).max()) * 2 + 1
    shifted = boxes + (candidates.classes.astype(np.float64) * span)[:, None]
    return candidates.take(nms(shifted, candidates.scores, iou_threshold, max_keep))


def to_source(boxes: np.ndarray, letterbox: Letterbox | None,
              input_size: tuple[int, int] | None = None) -> np.ndarray:
    """Input-normalised boxes → source-image [0, 1], undoing the letterbox when there was one."""
    if letterbox is None:
        return np.clip(np.asarray(boxes, dtype=np.float32), 0.0, 1.0)
    return letterbox_to_source(boxes, letterbox, input_size)
