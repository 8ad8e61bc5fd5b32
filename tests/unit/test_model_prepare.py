"""Frames preprocessed ahead (on a file source's capture thread) give the same results."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_runtime.model import open_model


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
