"""Calibration checks: sound data passes; each kind of degenerate data is named."""

from __future__ import annotations

import numpy as np
import pytest

from converters.data import Dataset
from converters.hygiene import MIN_SAMPLES, check_calibration
from converters.samples import digit_to_image
from edge_runtime.preprocess import InputSpec

DIGITS_SPEC = InputSpec(shape=(1, 28, 28, 1), color="GRAY", mean=(0.0,), std=(255.0,))
NAMES = [f"digit_{i}" for i in range(10)]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    """300 of scikit-learn's real handwritten digits as 48x48 BGR frames, labelled."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    items = [digit_to_image(img) for img in raw.images[:300]]
    return Dataset(items, raw.target[:300].astype(np.int64), NAMES, "digits", "0" * 64)


def frames(items: list[np.ndarray], labels: list[int] | None = None) -> Dataset:
    y = None if labels is None else np.asarray(labels, dtype=np.int64)
    return Dataset(items, y, NAMES if labels is not None else None, "test", "0" * 64)


def replace(data: Dataset, count: int, make: object) -> Dataset:
    """``data`` with its first ``count`` frames swapped for ``make(i)``."""
    assert callable(make)
    items = [make(i) if i < count else x for i, x in enumerate(data.items)]
    return Dataset(items, data.labels, data.class_names, data.source, data.sha256)


def test_real_digits_pass(digits: Dataset) -> None:
    assert check_calibration(digits, DIGITS_SPEC, NAMES) == []


def test_too_few_samples_are_refused_with_the_minimum(digits: Dataset) -> None:
    few = digits.subset(range(MIN_SAMPLES - 1))
    problems = check_calibration(few, DIGITS_SPEC, None)
    assert len(problems) == 1
    assert f"only {MIN_SAMPLES - 1} calibration samples; at least {MIN_SAMPLES}" in problems[0]
    assert check_calibration(digits.subset(range(MIN_SAMPLES)), DIGITS_SPEC, None) == []


def test_all_black_frames_are_called_constant_not_normalised() -> None:
    black = frames([np.zeros((48, 48, 3), np.uint8)] * 40)
    problems = check_calibration(black, DIGITS_SPEC, None)
    assert len(problems) == 1, problems
    assert "100% of the calibration frames are constant or nearly so" in problems[0]


def test_near_constant_frames_are_refused() -> None:
    rng = np.random.default_rng(0)
    dull = frames([np.full((48, 48, 3), 120, np.uint8) + rng.integers(0, 3, (48, 48, 3),
                                                                      dtype=np.uint8)
                   for _ in range(40)])
    problems = check_calibration(dull, DIGITS_SPEC, None)
    assert any("constant or nearly so" in p for p in problems)


def test_flat_frames_count_only_when_they_are_the_majority(digits: Dataset) -> None:
    def black(_: int) -> np.ndarray:
        return np.zeros((48, 48, 3), np.uint8)

    mostly = replace(digits, 180, black)     # 60% flat
    some = replace(digits, 120, black)       # 40% flat
    assert any("60% of the calibration frames" in p
               for p in check_calibration(mostly, DIGITS_SPEC, None))
    assert check_calibration(some, DIGITS_SPEC, None) == []


def test_one_image_repeated_is_refused(digits: Dataset) -> None:
    same = frames([digits.items[0]] * 50)
    problems = check_calibration(same, DIGITS_SPEC, None)
    assert problems == ["the calibration frames are nearly all the same image; use varied frames"]


def test_already_normalised_data_with_a_0_255_std_is_refused(digits: Dataset) -> None:
    unit = frames([x.astype(np.float32) / 255.0 for x in digits.items])
    problems = check_calibration(unit, DIGITS_SPEC, None)
    assert len(problems) == 1, problems
    assert "all within [0, 1] but --input-std 255" in problems[0]


def test_normalised_data_with_a_matching_std_passes(digits: Dataset) -> None:
    unit = frames([x.astype(np.float32) / 255.0 for x in digits.items])
    spec = InputSpec(shape=(1, 28, 28, 1), color="GRAY", mean=(0.0,), std=(1.0,))
    assert check_calibration(unit, spec, None) == []


def test_values_outside_pixel_range_are_refused(digits: Dataset) -> None:
    centred = frames([x.astype(np.float32) - 128.0 for x in digits.items[:40]])
    problems = check_calibration(centred, DIGITS_SPEC, None)
    assert len(problems) == 1
    assert "pixel values span [-128, 127]" in problems[0]


def test_a_class_without_samples_is_named(digits: Dataset) -> None:
    assert digits.labels is not None
    without_seven = digits.subset(np.flatnonzero(digits.labels != 7))
    problems = check_calibration(without_seven, DIGITS_SPEC, NAMES)
    assert problems == ["class(es) digit_7 have no calibration samples"]
    # without labels to compare against there is nothing to check
    assert check_calibration(without_seven, DIGITS_SPEC, None) == []


def test_every_problem_is_reported_at_once(digits: Dataset) -> None:
    assert digits.labels is not None
    zeros = digits.subset(np.flatnonzero(digits.labels == 0)[:5])
    problems = check_calibration(zeros, DIGITS_SPEC, NAMES)
    assert len(problems) == 2
    assert "only 5 calibration samples" in problems[0]
    assert "digit_1, digit_2" in problems[1]


# --- sensor windows -----------------------------------------------------------------------------

SENSOR_SPEC = InputSpec(shape=(1, 50, 3), mean=(0.0,), std=(9.81,))


def accelerometer(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, 50)[:, None]
    return [np.sin(t * rng.uniform(1, 3) + rng.uniform(0, 6, 3)) * 9.81
            + rng.normal(0, 0.3, (50, 3)) for _ in range(n)]


def test_real_looking_sensor_windows_pass() -> None:
    assert check_calibration(frames(accelerometer(40)), SENSOR_SPEC, None) == []


def test_constant_sensor_windows_are_refused() -> None:
    flat = frames([np.full((50, 3), 1.5)] * 40)
    assert check_calibration(flat, SENSOR_SPEC, None) == [
        "the calibration windows are all constant; use real sensor recordings"]


def test_sensor_mean_and_std_that_do_not_fit_the_data_are_refused() -> None:
    raw_counts = frames([w * 1000 + 30_000 for w in accelerometer(40)])
    problems = check_calibration(raw_counts, SENSOR_SPEC, None)
    assert len(problems) == 1
    assert "the declared mean/std do not match the data" in problems[0]
