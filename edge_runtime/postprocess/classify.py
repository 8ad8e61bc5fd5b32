"""Classification: scores → top-k predictions, with softmax when the model emits logits."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_runtime.postprocess.params import Params
from edge_runtime.postprocess.types import (
    Outcome,
    OutputInfo,
    PostContext,
    Postprocess,
    Prediction,
    dequantize_outputs,
    label_for,
    round_score,
)

TASK = "classification"
PARAMS = ("top_k", "softmax")
SUM_TOLERANCE = 0.02


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = values.astype(np.float64) - np.max(values)
    exp = np.exp(shifted)
    return (exp / exp.sum()).astype(np.float32)


def sigmoid(values: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-values.astype(np.float64)))).astype(np.float32)


def looks_like_probabilities(scores: np.ndarray, scale: float = 0.0) -> bool:
    """True when ``scores`` are in [0, 1] and (for several classes) sum to about 1.

    Quantized probabilities carry a rounding error per class, so the tolerance on the sum grows
    with the number of classes and the output's scale.
    """
    if scores.size == 0 or scores.min() < 0.0 or scores.max() > 1.0:
        return False
    if scores.size == 1:
        return True
    tolerance = SUM_TOLERANCE + np.sqrt(scores.size) * scale
    return bool(abs(float(scores.sum()) - 1.0) <= tolerance)


def quantized_as_probabilities(info: OutputInfo) -> bool:
    """TFLite quantizes every softmax and logistic output to [0, 1) with scale 1/256 (zero point
    -128 in int8, 0 in uint8). Such an output holds probabilities whatever one frame's values
    look like: several independent sigmoid scores need not sum to 1."""
    if not math.isclose(info.scale, 1 / 256, rel_tol=1e-6):
        return False
    return (info.dtype, info.zero_point) in (("int8", -128), ("uint8", 0))


def to_probabilities(scores: np.ndarray, mode: str | bool, scale: float = 0.0) -> np.ndarray:
    """Apply softmax (sigmoid for a single score) per ``mode``: "auto", True or False."""
    if mode is False or (mode == "auto" and looks_like_probabilities(scores, scale)):
        return scores
    return sigmoid(scores) if scores.size == 1 else softmax(scores)


def top_k_predictions(scores: np.ndarray, labels: Sequence[str], k: int) -> list[Prediction]:
    """The ``k`` best classes, best first; ties keep the lower class index first."""
    flat = np.asarray(scores, dtype=np.float32).reshape(-1)
    k = min(k, flat.size)
    if k <= 0:
        return []
    order = np.argsort(-flat, kind="stable")[:k]
    return [Prediction(label_for(int(i), labels), int(i), round_score(flat[i])) for i in order]


def classification_outcome(predictions: Sequence[Prediction]) -> Outcome:
    payload = {"predictions": [p.as_dict() for p in predictions]}
    if not predictions:
        return Outcome(TASK, payload)
    best = predictions[0]
    return Outcome(TASK, payload, best.label, best.index, best.score)


def build_classification(outputs: Sequence[OutputInfo], labels: Sequence[str],
                         params: Mapping[str, Any] | None) -> Postprocess:
    if len(outputs) != 1:
        raise ValueError(f"classification takes one output tensor; the model has {len(outputs)}")
    reader = Params(TASK, params)
    reader.warn_unknown(PARAMS)
    top_k = reader.integer("top_k", 3, minimum=1)
    mode = _softmax_mode(reader)
    if mode == "auto" and quantized_as_probabilities(outputs[0]):
        mode = False  # decided once, rather than by checking every frame's scores
    scale = outputs[0].scale
    labels = tuple(labels)

    def classify(arrays: Sequence[np.ndarray], context: PostContext) -> Outcome:
        (scores,) = dequantize_outputs(arrays, outputs)
        probabilities = to_probabilities(scores.reshape(-1), mode, scale)
        outcome = classification_outcome(top_k_predictions(probabilities, labels, top_k))
        outcome.probabilities = probabilities
        return outcome

    return classify


def _softmax_mode(reader: Params) -> str | bool:
    value = reader.raw("softmax", "auto")
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("auto", "true", "false"):
        lowered = value.lower()
        return "auto" if lowered == "auto" else lowered == "true"
    raise ValueError(f"classification parameter 'softmax' must be auto, true or false, "
                     f"got {value!r}")
