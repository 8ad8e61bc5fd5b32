"""Regression values and anomaly scores (sensor windows and images alike)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_runtime.postprocess.params import Params, is_number
from edge_runtime.postprocess.types import (
    Outcome,
    OutputInfo,
    PostContext,
    Postprocess,
    compact,
    dequantize_outputs,
)

REGRESSION = "regression"
ANOMALY = "anomaly"
REGRESSION_PARAMS: tuple[str, ...] = ()
ANOMALY_PARAMS = ("threshold", "reference_stats")
DEFAULT_THRESHOLD = 0.5
STD_MULTIPLIER = 3.0


def build_regression(outputs: Sequence[OutputInfo], labels: Sequence[str],
                     params: Mapping[str, Any] | None) -> Postprocess:
    if not outputs:
        raise ValueError("regression needs at least one output tensor")
    Params(REGRESSION, params).warn_unknown(REGRESSION_PARAMS)

    def regress(arrays: Sequence[np.ndarray], context: PostContext) -> Outcome:
        values = np.concatenate([a.reshape(-1) for a in dequantize_outputs(arrays, outputs)])
        return regression_outcome(values)

    return regress


def regression_outcome(values: np.ndarray) -> Outcome:
    payload = {"values": [compact(v) for v in values]}
    if not values.size:
        return Outcome(REGRESSION, payload)
    top = int(np.argmax(values))
    return Outcome(REGRESSION, payload, None, top, payload["values"][top])


def reconstruction_error(reconstruction: np.ndarray, original: np.ndarray | None) -> float:
    """Mean squared error between an autoencoder's output and its (float-space) input."""
    if original is None:
        raise ValueError("anomaly reconstruction needs the model input (PostContext.input_tensor)")
    if reconstruction.size != original.size:
        raise ValueError(f"anomaly output has {reconstruction.size} values but the input has "
                         f"{original.size}; expected a single score or a reconstruction")
    diff = reconstruction.reshape(-1).astype(np.float64) - original.reshape(-1).astype(np.float64)
    return float(np.mean(diff * diff))


def threshold_from_stats(stats: Any) -> float | None:
    """An anomaly threshold from the manifest's ``reference_stats``.

    Reads ``threshold``, else ``p99``, else ``mean + 3 * std``, at the top level or under
    ``score`` / ``anomaly``.
    """
    if not isinstance(stats, Mapping):
        return None
    for nested in ("anomaly", "score"):
        found = threshold_from_stats(stats.get(nested))
        if found is not None:
            return found
    for key in ("threshold", "p99"):
        if is_number(stats.get(key)):
            return float(stats[key])
    if is_number(stats.get("mean")) and is_number(stats.get("std")):
        return float(stats["mean"]) + STD_MULTIPLIER * float(stats["std"])
    return None


def anomaly_threshold(reader: Params) -> float:
    if "threshold" in reader:
        return reader.number("threshold", DEFAULT_THRESHOLD)
    from_stats = threshold_from_stats(reader.raw("reference_stats"))
    return DEFAULT_THRESHOLD if from_stats is None else from_stats


def build_anomaly(outputs: Sequence[OutputInfo], labels: Sequence[str],
                  params: Mapping[str, Any] | None) -> Postprocess:
    if len(outputs) != 1:
        raise ValueError(f"anomaly takes one output tensor (a score or a reconstruction); "
                         f"the model has {len(outputs)}")
    reader = Params(ANOMALY, params)
    reader.warn_unknown(ANOMALY_PARAMS)
    threshold = anomaly_threshold(reader)
    single_score = outputs[0].size == 1

    def score_anomaly(arrays: Sequence[np.ndarray], context: PostContext) -> Outcome:
        (output,) = dequantize_outputs(arrays, outputs)
        if single_score and output.size == 1:
            score = float(output.reshape(-1)[0])
        else:
            score = reconstruction_error(output, context.input_tensor)
        return anomaly_outcome(score, threshold)

    return score_anomaly


def anomaly_outcome(score: float, threshold: float) -> Outcome:
    is_anomaly = score > threshold
    shown = compact(score)
    payload = {"anomaly": {"score": shown, "threshold": compact(threshold),
                           "is_anomaly": is_anomaly}}
    label = "anomaly" if is_anomaly else "normal"
    return Outcome(ANOMALY, payload, label, int(is_anomaly), shown)
