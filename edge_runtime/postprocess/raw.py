"""Raw task: every output tensor, dequantized and truncated so payloads stay bounded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_runtime.postprocess.params import Params
from edge_runtime.postprocess.types import (
    Outcome,
    OutputInfo,
    PostContext,
    Postprocess,
    compact,
    dequantize_outputs,
)

TASK = "raw"
PARAMS = ("max_values",)


def build_raw(outputs: Sequence[OutputInfo], labels: Sequence[str],
              params: Mapping[str, Any] | None) -> Postprocess:
    if not outputs:
        raise ValueError("raw needs at least one output tensor")
    reader = Params(TASK, params)
    reader.warn_unknown(PARAMS)
    max_values = reader.integer("max_values", 1000, minimum=0)

    def passthrough(arrays: Sequence[np.ndarray], context: PostContext) -> Outcome:
        tensors = dequantize_outputs(arrays, outputs)
        entries = [describe(info.name, tensor, max_values)
                   for info, tensor in zip(outputs, tensors, strict=True)]
        return Outcome(TASK, {"outputs": entries})

    return passthrough


def describe(name: str, tensor: np.ndarray, max_values: int) -> dict[str, Any]:
    """One output as ``{"name", "shape", "values"}``; values flattened, first ``max_values``."""
    values = tensor.reshape(-1)[:max_values]
    return {"name": name, "shape": [int(d) for d in tensor.shape],
            "values": [compact(v) for v in values]}
