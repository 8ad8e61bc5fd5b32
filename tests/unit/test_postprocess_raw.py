from __future__ import annotations

import json

import numpy as np
import pytest

from edge_runtime.postprocess import OutputInfo, PostContext, build_postprocessor


def test_raw_lists_every_output_dequantized() -> None:
    a = np.array([[-128, 0, 127]], np.int8)
    b = np.arange(6, dtype=np.float32).reshape(1, 2, 3) / 4
    infos = [OutputInfo("logits", (1, 3), "int8", 0.1, -28), OutputInfo("emb", (1, 2, 3), "float32")]
    outcome = build_postprocessor("raw", infos, [])([a, b], PostContext())
    first, second = outcome.payload["outputs"]
    assert first["name"] == "logits" and first["shape"] == [1, 3]
    assert first["values"] == pytest.approx([-10.0, 2.8, 15.5])
    assert second == {"name": "emb", "shape": [1, 2, 3], "values": [0, 0.25, 0.5, 0.75, 1, 1.25]}
    assert (outcome.task, outcome.top_label, outcome.top_score) == ("raw", None, None)
    assert json.loads(json.dumps(outcome.payload)) == outcome.payload


def test_raw_truncates_to_max_values() -> None:
    big = np.arange(5000, dtype=np.float32)
    info = [OutputInfo("big", (5000,), "float32")]
    default = build_postprocessor("raw", info, [])([big], PostContext())
    assert default.payload["outputs"][0]["values"] == list(range(1000))
    assert default.payload["outputs"][0]["shape"] == [5000]
    small = build_postprocessor("raw", info, [], {"max_values": 3})([big], PostContext())
    assert small.payload["outputs"][0]["values"] == [0, 1, 2]


def test_raw_bad_max_values() -> None:
    with pytest.raises(ValueError, match="max_values"):
        build_postprocessor("raw", [OutputInfo("o", (1,), "float32")], [], {"max_values": -1})
