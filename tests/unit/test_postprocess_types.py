from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.postprocess import (
    TASKS,
    OutputInfo,
    PostContext,
    build_postprocessor,
    dequantize,
)


def test_dequantize_int8_and_uint8() -> None:
    q = np.array([-128, -3, 0, 127], np.int8)
    out = dequantize(q, 0.25, -3)
    assert out.dtype == np.float32
    assert out.tolist() == [-31.25, 0.0, 0.75, 32.5]
    u = dequantize(np.array([0, 128, 255], np.uint8), 1 / 128, 128)
    assert u.tolist() == pytest.approx([-1.0, 0.0, 127 / 128])


def test_dequantize_leaves_float_values_alone() -> None:
    values = np.array([0.5, -2.0], np.float64)
    out = dequantize(values, 0.0, 7)
    assert out.dtype == np.float32
    assert out.tolist() == [0.5, -2.0]


def test_every_task_builds() -> None:
    shapes: dict[str, list[tuple[int, ...]]] = {
        "classification": [(1, 3)], "detection": [(1, 10, 4), (1, 10), (1, 10), (1,)],
        "regression": [(1, 2)], "anomaly": [(1, 1)], "raw": [(1, 2)],
    }
    assert set(shapes) == set(TASKS)
    for task, task_shapes in shapes.items():
        infos = [OutputInfo(f"o{i}", s, "float32") for i, s in enumerate(task_shapes)]
        arrays = [np.zeros(s, np.float32) for s in task_shapes]
        assert build_postprocessor(task, infos, ["a", "b", "c"])(arrays, PostContext()).task == task


def test_unknown_task_is_one_clear_line() -> None:
    with pytest.raises(ValueError, match=r"^unknown task 'segmentation'; known: classification"):
        build_postprocessor("segmentation", [OutputInfo("o", (1, 3), "float32")], [])


def test_wrong_number_of_tensors_at_run_time() -> None:
    post = build_postprocessor("classification", [OutputInfo("o", (1, 3), "float32")], [])
    with pytest.raises(ValueError, match="expected 1 output tensors, got 2"):
        post([np.zeros((1, 3)), np.zeros((1, 3))], PostContext())


def test_unknown_params_are_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    build_postprocessor("classification", [OutputInfo("o", (1, 3), "float32")], [],
                        {"top_kk": 2})
    assert "top_kk" in caplog.text
