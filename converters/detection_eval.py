"""Verifying a detector: mAP@0.5 against ground truth, box agreement between the float and the
int8 model, and the range-collapse check on quantized outputs.

Boxes are ``[x_min, y_min, x_max, y_max]`` normalised to the image, as the daemon publishes them;
a detection is ``(class_index, score, box)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

IOU_MATCH = 0.5
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Det:
    cls: int
    score: float
    box: Box


@dataclass(frozen=True)
class Truth:
    cls: int
    box: Box


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4): an (N, M) matrix."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def mean_average_precision(detections: Sequence[Sequence[Det]],
                           truths: Sequence[Sequence[Truth]], classes: int) -> dict[str, Any]:
    """mAP@0.5 over images (all-point interpolated AP per class, averaged over the classes that
    have ground truth), with the AP of each class."""
    per_class: dict[int, float] = {}
    for cls in range(classes):
        scored: list[tuple[float, bool]] = []
        positives = 0
        for dets, gts in zip(detections, truths, strict=True):
            gt_boxes = np.array([t.box for t in gts if t.cls == cls], dtype=np.float64)
            positives += len(gt_boxes)
            mine = sorted((d for d in dets if d.cls == cls), key=lambda d: -d.score)
            taken = np.zeros(len(gt_boxes), dtype=bool)
            if mine and len(gt_boxes):
                overlaps = iou(np.array([d.box for d in mine], dtype=np.float64), gt_boxes)
            for k, det in enumerate(mine):
                hit = False
                if len(gt_boxes):
                    row = np.where(taken, -1.0, overlaps[k])
                    best = int(np.argmax(row))
                    if row[best] >= IOU_MATCH:
                        taken[best] = hit = True
                scored.append((det.score, hit))
        if positives:
            per_class[cls] = _average_precision(scored, positives)
    value = float(np.mean(list(per_class.values()))) if per_class else 0.0
    return {"map50": round(value, 5), "per_class": {str(k): round(v, 5)
                                                    for k, v in per_class.items()},
            "images": len(truths)}


def _average_precision(scored: list[tuple[float, bool]], positives: int) -> float:
    if not scored:
        return 0.0
    scored.sort(key=lambda item: -item[0])
    hits = np.array([h for _, h in scored], dtype=np.float64)
    tp = np.cumsum(hits)
    fp = np.cumsum(1.0 - hits)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, 1e-12)
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def box_agreement(reference: Sequence[Sequence[Det]], other: Sequence[Sequence[Det]],
                  ) -> dict[str, Any]:
    """How far two models' detections agree, image by image: detections of the same class
    matched one to one at IoU ≥ 0.5; agreement is 2·matched / (boxes of one + boxes of other)."""
    matched = total_ref = total_other = 0
    for ref, oth in zip(reference, other, strict=True):
        total_ref += len(ref)
        total_other += len(oth)
        matched += _matches(ref, oth)
    total = total_ref + total_other
    return {"agreement": round(2 * matched / total, 5) if total else 1.0,
            "matched": matched, "float_boxes": total_ref, "int8_boxes": total_other}


def _matches(ref: Sequence[Det], oth: Sequence[Det]) -> int:
    if not ref or not oth:
        return 0
    overlaps = iou(np.array([d.box for d in ref], dtype=np.float64),
                   np.array([d.box for d in oth], dtype=np.float64))
    same = np.array([[a.cls == b.cls for b in oth] for a in ref])
    overlaps = np.where(same, overlaps, 0.0)
    count = 0
    while overlaps.size and overlaps.max() >= IOU_MATCH:
        i, j = np.unravel_index(int(np.argmax(overlaps)), overlaps.shape)
        overlaps[i, :] = 0.0
        overlaps[:, j] = 0.0
        count += 1
    return count


def collapsed_scores(name: str, values: np.ndarray, score_rows: np.ndarray, scale: float,
                     ) -> str | None:
    """The range-collapse check for one quantized detection output that carries coordinates and
    scores together: with one scale set by coordinates in pixels, scores round to zero.

    ``values`` are the float model's outputs on the validation data, ``score_rows`` a boolean mask
    of the score entries. Returns the one-line problem, or None when the scores survive."""
    if scale <= 0 or not score_rows.any():
        return None
    scores = values[score_rows]
    others = values[~score_rows]
    top = float(np.percentile(scores, 99.9)) if scores.size else 0.0
    steps = top / scale
    if steps >= 8:
        return None
    biggest = float(np.abs(others).max()) if others.size else 0.0
    return (f"output {name!r} holds box coordinates (up to {biggest:.4g}) and class scores "
            f"(up to {top:.3g}) in one tensor quantized with one scale ({scale:.4g}): the scores "
            f"keep only {steps:.1f} of 255 steps and mostly become 0. Export the model with "
            "separate box and score outputs, or with coordinates normalised to [0, 1]")


def yolo_score_mask(shape: Sequence[int], classes: int, version: str) -> np.ndarray:
    """Which entries of a YOLO head hold scores: v8 ``[1, 4+C, N]`` rows 4.., v5 ``[1, N, 5+C]``
    columns 4.. (objectness and class scores)."""
    mask = np.zeros(tuple(shape), dtype=bool)
    if version == "v8":
        mask[..., 4:, :] = True
    else:
        mask[..., 4:] = True
    if mask.shape[-1 if version == "v5" else -2] != (5 if version == "v5" else 4) + classes:
        raise ValueError(f"a {version} head for {classes} classes does not have shape "
                         f"{list(shape)}")
    return mask
