"""What the board will watch the model against (SPEC §9): the reference statistics the daemon's
monitor compares each window with, and the golden samples its self-test replays.

Both are measured here, on the validation data, with the daemon's own functions
(:mod:`edge_runtime.monitor.reference` bins and statistics, :mod:`edge_runtime.preprocess`, the
same LiteRT interpreter), so that host and board measure alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends import load_backend
from edge_runtime.monitor.golden import MAX_SAMPLES, GoldenSample
from edge_runtime.monitor.reference import (
    DETECTIONS_EDGES,
    SCORE_EDGES,
    fit_temperature,
    histogram,
    input_statistics,
    margins,
)
from edge_runtime.preprocess import InputSpec, Preprocessor

from .data import Dataset
from .verify import reference_stats

SATURATION_SAMPLES = 200


def watch_reference(task: str, outputs: np.ndarray, class_names: list[str] | None,
                    softmax: bool, data: Dataset, spec: InputSpec,
                    detections: Sequence[Sequence[object]] | None = None) -> dict[str, Any]:
    """``reference_stats``: the output statistics of before, plus the score and margin histograms,
    the input statistics, the temperature that calibrates the scores and the int8 accuracy; for
    a detector, the int8 model's detections per frame."""
    stats = reference_stats(task, outputs, class_names, softmax)
    if spec.is_image and data.items:
        stats["input"] = {**input_statistics(data.items),
                          "saturated_share": saturated_share(data, spec)}
    if task == "detection" and detections:
        counts = [len(found) for found in detections]
        stats["detections_per_frame"] = {"mean": round(float(np.mean(counts)), 4),
                                         "max": int(max(counts))}
        stats["histograms"] = {"detections_per_frame":
                               histogram(counts, DETECTIONS_EDGES).to_json()}
    if task != "classification" or outputs.ndim != 2 or outputs.shape[1] < 2:
        return stats
    probs = _softmax(outputs) if softmax else np.clip(outputs, 0.0, 1.0)
    stats["histograms"] = {"top1_score": histogram(probs.max(axis=1), SCORE_EDGES).to_json(),
                           "margin": histogram(margins(probs), SCORE_EDGES).to_json()}
    labels = data.labels
    if labels is not None and len(labels) == len(probs) and np.all(labels >= 0):
        stats["temperature"] = fit_temperature(probs, labels)
        stats["accuracy"] = round(float(np.mean(probs.argmax(axis=1) == labels)), 5)
    return stats


def saturated_share(data: Dataset, spec: InputSpec) -> float | None:
    """Share of the quantized input tensor's values at the integer ends (None for float input)."""
    if spec.dtype not in ("int8", "uint8"):
        return None
    info = np.iinfo(np.dtype(spec.dtype))
    pre = Preprocessor(spec)
    at_ends = total = 0
    for item in data.items[:SATURATION_SAMPLES]:
        tensor = pre(item)
        at_ends += int(np.count_nonzero((tensor == info.min) | (tensor == info.max)))
        total += tensor.size
    return round(at_ends / total, 6) if total else None


def record_golden(model: Path, data: Dataset, spec: InputSpec,
                  count: int = MAX_SAMPLES) -> list[GoldenSample]:
    """Up to ``count`` validation inputs, as a source delivers them, with the raw outputs this
    host's LiteRT gives for them through the daemon's preprocessing."""
    backend = load_backend(model, threads=1)
    try:
        pre = Preprocessor(spec)
        picks = np.linspace(0, len(data.items) - 1, num=min(count, len(data.items)), dtype=int)
        samples = []
        for index in dict.fromkeys(int(i) for i in picks):
            item = data.items[index]
            backend.fill_input(_filler(pre, item))
            backend.invoke()
            samples.append(GoldenSample(np.asarray(item), tuple(backend.get_outputs())))
        return samples
    finally:
        backend.close()


def _filler(pre: Preprocessor, item: np.ndarray) -> Callable[[np.ndarray], None]:
    def fill(buffer: np.ndarray) -> None:
        pre(item, out=buffer)

    return fill


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))
