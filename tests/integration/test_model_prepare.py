"""Frames preprocessed ahead (on a file source's capture thread) give the same results; a
profile's thread count is capped at the cores available."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.model import open_model
from edge_runtime.system.sysinfo import cpu_count


def images(digits: Path, count: int) -> list[np.ndarray]:
    paths = sorted((digits / "images" / "val").rglob("*.png"))[:count]
    return [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]


def test_a_prepared_frame_predicts_exactly_like_one_preprocessed_in_run(
        digits: Path, digits_bundle: Path) -> None:
    model = open_model(digits_bundle, threads=1)
    for image in images(digits, 20):
        direct, _ = model.run(image)
        prepared = model.prepare(image)
        ahead, timings = model.run(image, prepared)
        assert ahead.payload == direct.payload
        assert timings.preprocess >= prepared.ms


def test_run_uses_the_prepared_tensor_only_when_it_was_made_for_this_model(
        digits: Path, digits_bundle: Path) -> None:
    model, other = open_model(digits_bundle, threads=1), open_model(digits_bundle, threads=1)
    (image,) = images(digits, 1)
    direct, _ = model.run(image)
    blank = model.prepare(image)
    blank.tensor[...] = blank.tensor.min()
    assert model.run(image, blank)[0].payload != direct.payload  # the prepared tensor is used
    foreign = other.prepare(image)
    foreign.tensor[...] = foreign.tensor.min()
    assert model.run(image, foreign)[0].payload == direct.payload  # another model's is not


def test_a_profile_asking_for_more_threads_than_cores_gets_the_cores(
        digits_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = open_model(digits_bundle)
    asked = model.bundle.profile["threads"]
    assert asked > 1 and model.backend.threads == min(asked, cpu_count())
    monkeypatch.setattr("edge_runtime.model.cpu_count", lambda: 1)
    assert open_model(digits_bundle).backend.threads == 1
    assert open_model(digits_bundle, threads=3).backend.threads == 3  # asked for: kept
