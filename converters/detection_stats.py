"""How sure the detection figures are: a paired bootstrap over images.

mAP is not a proportion of independent trials, so its interval comes from resampling images:
every resample weighs each image by how often it was drawn, the same weights for the float and
the int8 model, so the interval is the paired drop's. Matching is per image, so a resample only
re-weighs each image's matched and unmatched detections; nothing is matched again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .detection_eval import IOU_MATCH, Det, Truth, _matches, iou

RESAMPLES = 1000
SEED = 0


def _class_table(detections: Sequence[Sequence[Det]], truths: Sequence[Sequence[Truth]],
                 cls: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For one class: every detection's score, hit (matched greedily, best score first, at
    IoU ≥ 0.5, as ``mean_average_precision`` does) and image; and the positives per image."""
    scores: list[float] = []
    hits: list[bool] = []
    images: list[int] = []
    positives = np.zeros(len(truths))
    for index, (dets, gts) in enumerate(zip(detections, truths, strict=True)):
        gt_boxes = np.array([t.box for t in gts if t.cls == cls], dtype=np.float64)
        positives[index] = len(gt_boxes)
        mine = sorted((d for d in dets if d.cls == cls), key=lambda d: -d.score)
        taken = np.zeros(len(gt_boxes), dtype=bool)
        overlaps = (iou(np.array([d.box for d in mine], dtype=np.float64), gt_boxes)
                    if mine and len(gt_boxes) else None)
        for k, det in enumerate(mine):
            hit = False
            if overlaps is not None:
                row = np.where(taken, -1.0, overlaps[k])
                best = int(np.argmax(row))
                if row[best] >= IOU_MATCH:
                    taken[best] = hit = True
            scores.append(det.score)
            hits.append(hit)
            images.append(index)
    order = np.argsort(-np.asarray(scores), kind="stable")
    return (np.asarray(scores)[order], np.asarray(hits, dtype=np.float64)[order],
            np.asarray(images, dtype=np.int64)[order], positives)


def weighted_map(detections: Sequence[Sequence[Det]], truths: Sequence[Sequence[Truth]],
                 classes: int, weights: np.ndarray) -> np.ndarray:
    """mAP@0.5 (all-point interpolated AP averaged over the classes with ground truth) for each
    row of image ``weights`` (R, images): R resamples at once."""
    per_class = []
    for cls in range(classes):
        _, hits, images, positives = _class_table(detections, truths, cls)
        total = weights @ positives
        if not np.any(total > 0):
            continue
        w = weights[:, images]
        tp = np.cumsum(w * hits, axis=1)
        fp = np.cumsum(w * (1.0 - hits), axis=1)
        recall = tp / np.maximum(total, 1e-12)[:, None]
        precision = tp / np.maximum(tp + fp, 1e-12)
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        steps = np.diff(np.concatenate([np.zeros((len(w), 1)), recall], axis=1), axis=1)
        ap = np.sum(steps * envelope, axis=1)
        per_class.append(np.where(total > 0, ap, np.nan))
    if not per_class:
        return np.zeros(len(weights))
    with np.errstate(invalid="ignore"):
        stacked = np.vstack(per_class)
        counted = np.sum(~np.isnan(stacked), axis=0)
        return np.where(counted > 0, np.nansum(stacked, axis=0) / np.maximum(counted, 1), 0.0)


def resample_weights(images: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Row 0 is the data as they are (all ones); the others are bootstrap draws."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, images, size=(resamples, images))
    counts = np.zeros((resamples, images))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    return np.vstack([np.ones((1, images)), counts])


def _figure(values: np.ndarray, n: int, scale: float = 1.0) -> dict[str, Any]:
    low, high = np.percentile(values[1:], [2.5, 97.5]) if len(values) > 1 else (values[0],) * 2
    return {"value": round(float(values[0]) * scale, 5), "n": n,
            "ci95": [round(float(low) * scale, 5), round(float(high) * scale, 5)]}


def bootstrap_drop(floats: Sequence[Sequence[Det]], int8: Sequence[Sequence[Det]],
                   truths: Sequence[Sequence[Truth]] | None, classes: int,
                   resamples: int = RESAMPLES) -> dict[str, Any]:
    n = len(floats)
    weights = resample_weights(n, resamples)
    matched = np.array([_matches(a, b) for a, b in zip(floats, int8, strict=True)], float)
    boxes = np.array([len(a) + len(b) for a, b in zip(floats, int8, strict=True)], float)
    total = weights @ boxes
    agreement = np.where(total > 0, 2 * (weights @ matched) / np.maximum(total, 1e-12), 1.0)
    found: dict[str, Any] = {
        "box_agreement": _figure(agreement, n), "matched": int(matched.sum()),
        "float_boxes": sum(len(a) for a in floats), "int8_boxes": sum(len(b) for b in int8),
        "agreement_variance": max(float(np.var(agreement[1:])) * n, 1.0 / max(1, n)),
    }
    if truths is not None:
        map_float = weighted_map(floats, truths, classes, weights)
        map_int8 = weighted_map(int8, truths, classes, weights)
        drop = map_float - map_int8
        found.update(map50_float=_figure(map_float, n), map50_int8=_figure(map_int8, n),
                     map50_drop_points=_figure(drop, n, 100.0),
                     map_variance=max(float(np.var(drop[1:])) * n, 1.0 / max(1, n)))
    return found
