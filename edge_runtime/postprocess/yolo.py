"""Decoder for raw YOLO heads, followed by class-aware NMS.

Two layouts exist in the wild: v5-style ``[1, N, 5 + C]`` (x, y, w, h, objectness, class scores)
and v8-style ``[1, 4 + C, N]`` (x, y, w, h, class scores; no objectness; attributes first). The
layout is read from the shape and the number of labels. Coordinates are box centres and sizes,
either normalised or in input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_runtime.postprocess.boxes import (
    Candidates,
    Decoder,
    DetectionSettings,
    batched_nms,
    xywh_to_xyxy,
)
from edge_runtime.postprocess.params import Params
from edge_runtime.postprocess.types import OutputInfo, PostContext
from edge_runtime.preprocess import Letterbox

PARAMS = ("layout",)
LAYOUTS = ("auto", "v5", "v8")
PIXEL_COORDINATES_ABOVE = 1.5
# Bounds NMS time on a small CPU when a low threshold lets thousands of anchors through.
MAX_NMS_CANDIDATES = 3000


@dataclass(frozen=True, slots=True)
class YoloLayout:
    """``version`` "v5" has an objectness column; ``attributes_first`` means ``[1, 4+C, N]``."""

    version: str
    attributes_first: bool


def find_layout(shape: Sequence[int], num_labels: int, forced: str = "auto") -> YoloLayout:
    """Work out the layout of a ``[1, A, B]`` output from its shape and the number of labels."""
    dims = tuple(shape)
    if len(dims) == 3 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) != 2:
        raise ValueError(f"yolo output shape {list(shape)} is not [1, N, 5+C] or [1, 4+C, N]")
    rows, cols = dims
    matches = _matching_layouts(rows, cols, num_labels) if num_labels else []
    if forced != "auto":
        matches = [m for m in matches if m.version == forced]
    if matches:
        return matches[0]
    if num_labels:
        raise ValueError(
            f"yolo output shape {list(shape)} fits neither [1, N, 5+C] nor [1, 4+C, N] "
            f"with C = {num_labels} labels"
        )
    return _guess_layout(rows, cols, forced)


def _matching_layouts(rows: int, cols: int, classes: int) -> list[YoloLayout]:
    options = [
        (rows == 4 + classes, YoloLayout("v8", True)),
        (cols == 5 + classes, YoloLayout("v5", False)),
        (cols == 4 + classes, YoloLayout("v8", False)),
        (rows == 5 + classes, YoloLayout("v5", True)),
    ]
    return [layout for fits, layout in options if fits]


def _guess_layout(rows: int, cols: int, forced: str) -> YoloLayout:
    """Without labels, the attribute axis is the short one (N is in the thousands)."""
    attributes_first = rows < cols
    version = forced if forced != "auto" else ("v8" if attributes_first else "v5")
    attributes = rows if attributes_first else cols
    if attributes < (6 if version == "v5" else 5):
        raise ValueError(f"yolo output [{rows}, {cols}] has too few attributes for {version}")
    return YoloLayout(version, attributes_first)


def split_predictions(pred: np.ndarray, layout: YoloLayout,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xywh (N, 4), best class score (N,), class id (N,))`` from a 2-D head output."""
    table = pred.T if layout.attributes_first else pred
    xywh = table[:, :4]
    class_scores = table[:, 5:] if layout.version == "v5" else table[:, 4:]
    ids = np.argmax(class_scores, axis=1)
    best = np.take_along_axis(class_scores, ids[:, None], axis=1)[:, 0]
    if layout.version == "v5":
        best = best * table[:, 4]
    return xywh, best.astype(np.float32), ids.astype(np.int64)


def normalise_coordinates(xywh: np.ndarray, all_xywh: np.ndarray,
                          input_size: tuple[int, int] | None) -> np.ndarray:
    """Divide pixel coordinates by the input size; normalised ones pass through."""
    if not all_xywh.size or float(np.abs(all_xywh).max()) <= PIXEL_COORDINATES_ABOVE:
        return xywh
    if input_size is None:
        raise ValueError("yolo boxes are in input pixels; set the detection parameters "
                         "'input_width' and 'input_height'")
    width, height = input_size
    return xywh / np.asarray([width, height, width, height], dtype=np.float32)


def input_size_from(letterbox: Letterbox | None) -> tuple[int, int] | None:
    if letterbox is None:
        return None
    width = letterbox.src_width * letterbox.scale_x + 2 * letterbox.pad_x
    height = letterbox.src_height * letterbox.scale_y + 2 * letterbox.pad_y
    return round(width), round(height)


def _best_above(scores: np.ndarray, threshold: float, limit: int) -> np.ndarray:
    """Indices of scores ≥ ``threshold``; only the ``limit`` best when there are more."""
    keep = np.flatnonzero(scores >= threshold)
    if keep.size > limit:
        keep = keep[np.argpartition(-scores[keep], limit - 1)[:limit]]
    return keep


def build_yolo(outputs: Sequence[OutputInfo], labels: Sequence[str], params: Params,
               settings: DetectionSettings, version: str = "auto") -> Decoder:
    if len(outputs) != 1:
        raise ValueError(f"detection decoder 'yolo' takes one output; the model has {len(outputs)}")
    forced = params.choice("layout", version, LAYOUTS)
    layout = find_layout(outputs[0].shape, len(labels), forced)

    def decode(arrays: Sequence[np.ndarray], context: PostContext) -> Candidates:
        head = np.asarray(arrays[0], dtype=np.float32)
        pred = head.reshape(head.shape[-2:])
        xywh, scores, ids = split_predictions(pred, layout)
        keep = _best_above(scores, settings.score_threshold, MAX_NMS_CANDIDATES)
        size = settings.input_size or input_size_from(context.letterbox)
        boxes = xywh_to_xyxy(normalise_coordinates(xywh[keep], xywh, size))
        candidates = Candidates(boxes, scores[keep], ids[keep])
        return batched_nms(candidates, settings.iou_threshold, settings.max_detections)

    return decode


def build_yolov5(outputs: Sequence[OutputInfo], labels: Sequence[str], params: Params,
                 settings: DetectionSettings) -> Decoder:
    """``yolov5``: the v5 layout ``[1, N, 5 + C]``, named rather than read from the shape."""
    return build_yolo(outputs, labels, params, settings, "v5")


def build_yolov8(outputs: Sequence[OutputInfo], labels: Sequence[str], params: Params,
                 settings: DetectionSettings) -> Decoder:
    """``yolov8``: the v8 layout ``[1, 4 + C, N]``, named rather than read from the shape."""
    return build_yolo(outputs, labels, params, settings, "v8")
