"""Post-processing: pure functions from output tensors to a result, registered by task name.

``build_postprocessor(task, outputs, labels, params)`` checks once that the outputs fit the task
and returns a callable ``(arrays, PostContext) -> Outcome``. Every post-processor dequantizes
explicitly, so it is testable with synthetic tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edge_runtime.postprocess.classify import build_classification
from edge_runtime.postprocess.detect import DECODERS, build_detection
from edge_runtime.postprocess.raw import build_raw
from edge_runtime.postprocess.sensor import build_anomaly, build_regression
from edge_runtime.postprocess.types import (
    Detection,
    Outcome,
    OutputInfo,
    PostContext,
    Postprocess,
    Prediction,
    dequantize,
)

Builder = Callable[[Sequence[OutputInfo], Sequence[str], Mapping[str, Any] | None], Postprocess]
BUILDERS: dict[str, Builder] = {
    "classification": build_classification,
    "detection": build_detection,
    "regression": build_regression,
    "anomaly": build_anomaly,
    "raw": build_raw,
}
TASKS: tuple[str, ...] = tuple(BUILDERS)   # the one list of tasks: configs, CLIs, manifests


def build_postprocessor(task: str, outputs: Sequence[OutputInfo], labels: Sequence[str],
                        params: Mapping[str, Any] | None = None) -> Postprocess:
    """The post-processor for ``task``; ValueError (one line) when the outputs do not fit."""
    builder = BUILDERS.get(task)
    if builder is None:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return builder(outputs, labels, params)


__all__ = [
    "DECODERS",
    "TASKS",
    "Detection",
    "Outcome",
    "OutputInfo",
    "PostContext",
    "Postprocess",
    "Prediction",
    "build_postprocessor",
    "dequantize",
]
