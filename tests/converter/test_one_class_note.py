"""Summary notes on what the numbers cannot show: a classifier that gives one class to nearly
everything, an integer input range that misses the data, the ends a recovery left in float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters.data import Dataset
from converters.notes import input_range_note, one_class_note
from converters.prepare import Prepared
from converters.recovery import float_ends_note
from converters.verify import ModelRun
from edge_runtime.preprocess import InputSpec

NAMES = [f"digit_{i}" for i in range(10)]


def prepared(predicted: np.ndarray, labels: np.ndarray | None, task: str = "classification",
             ) -> Prepared:
    outputs = np.eye(10, dtype=np.float32)[predicted]
    spec = InputSpec(shape=(1, 8, 8, 1))
    data = Dataset([np.zeros((8, 8), np.uint8)] * len(predicted), labels, NAMES, "test", "0")
    return Prepared(work=Path("."), spec=spec, task=task, class_names=NAMES, calib=data,
                    calib_path=Path("c.npy"), evaluation=data, eval_basis="validation",
                    float_run=ModelRun(outputs, 1.0, 100, spec), float_model=Path("f.tflite"),
                    info={}, softmax=False)


def test_a_model_that_answers_one_class_for_everything_is_named() -> None:
    labels = np.arange(100) % 10
    note = one_class_note(prepared(np.full(100, 1), labels))
    assert note is not None and "'digit_1' to 100% of the 100 validation samples" in note


def test_a_model_that_tells_classes_apart_gets_no_note() -> None:
    labels = np.arange(100) % 10
    predicted = labels.copy()
    predicted[:30] = 1
    assert one_class_note(prepared(predicted, labels)) is None


def test_data_that_is_itself_one_class_gets_no_note() -> None:
    labels = np.where(np.arange(100) < 95, 0, 3)
    assert one_class_note(prepared(np.zeros(100, np.int64), labels)) is None


def test_unlabelled_data_and_other_tasks() -> None:
    assert one_class_note(prepared(np.full(50, 4), None)) is not None
    assert one_class_note(prepared(np.full(50, 4), None, task="regression")) is None
    assert one_class_note(prepared(np.full(10, 4), None)) is None  # too few to tell


def gray_frames(values: list[int]) -> Prepared:
    prep = prepared(np.arange(len(values)) % 10, None)
    prep.evaluation.items = [np.full((8, 8), v, np.uint8) for v in values]
    return prep


def test_an_input_range_that_misses_the_data_is_named() -> None:
    prep = gray_frames([0, 64, 128, 255] * 10)  # (pixel - 0) / 255: 0 … 1
    dark = InputSpec(shape=(1, 8, 8, 1), dtype="int8", color="GRAY", std=(255.0,), scale=0.001,
                     zero_point=-128)
    note = input_range_note(prep, dark)
    assert note is not None and "int8 input covers [0, 0.255]" in note and "50% of the" in note
    fitting = dark.with_quantization("int8", 1 / 255, -128)
    assert input_range_note(prep, fitting) is None
    assert input_range_note(prep, dark.with_quantization("float32", 0.0, 0)) is None


@pytest.mark.parametrize(("input_dtype", "output_dtype", "expected"), [
    ("int8", "int8", ""),
    ("float32", "int8",
     "; the input stays float32, not int8, as the layer next to it is kept in float"),
    ("int8", "float32",
     "; the output stays float32, not int8, as the layer next to it is kept in float"),
    ("float32", "float32", "; the input stays float32 and the output stays float32, not int8, "
                           "as the layers next to them are kept in float"),
])
def test_a_recovered_model_says_which_ends_stayed_float(input_dtype: str, output_dtype: str,
                                                        expected: str) -> None:
    spec = InputSpec(shape=(1, 8, 8, 1), dtype=input_dtype)
    run = ModelRun(np.zeros((1, 10), np.float32), 1.0, 100, spec, output_dtype)
    assert float_ends_note(run, "int8") == expected
