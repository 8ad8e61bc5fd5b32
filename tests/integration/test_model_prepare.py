"""Frames preprocessed ahead by the pipeline's stage give the same results; a profile's thread
count is capped at the cores available."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.frames import Frame
from edge_runtime.model import open_model
from edge_runtime.stages import PreprocessStage
from edge_runtime.system.sysinfo import cpu_count


def images(digits: Path, count: int) -> list[np.ndarray]:
    paths = sorted((digits / "images" / "val").rglob("*.png"))[:count]
    return [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]


def frame_of(image: np.ndarray) -> Frame:
    return Frame(index=0, ref="0", captured_at=0.0, data=image)


def test_a_frame_preprocessed_by_the_stage_predicts_exactly_like_one_preprocessed_in_run(
        digits: Path, digits_bundle: Path) -> None:
    model = open_model(digits_bundle, threads=1)
    stage = PreprocessStage(model.spec)
    for image in images(digits, 20):
        direct, _ = model.run(image)
        frame = frame_of(image)
        stage(frame)
        assert frame.input is not None and frame.input.generation == stage.generation
        ahead, timings = model.run(image, frame.input)
        assert ahead.payload == direct.payload
        assert timings.preprocess >= frame.input.ms


def test_the_input_made_ahead_is_what_runs_and_a_retarget_marks_it_stale(
        digits: Path, digits_bundle: Path) -> None:
    model = open_model(digits_bundle, threads=1)
    stage = PreprocessStage(model.spec)
    (image,) = images(digits, 1)
    direct, _ = model.run(image)
    frame = frame_of(image)
    stage(frame)
    assert frame.input is not None
    frame.input.tensor[...] = frame.input.tensor.min()
    assert model.run(image, frame.input)[0].payload != direct.payload  # the given tensor is used
    made_for = frame.input.generation
    assert stage.retarget(model.spec) != made_for   # a swap: what was made before is stale
    stage(frame)
    assert frame.input.generation == stage.generation != made_for


def test_a_profile_asking_for_more_threads_than_cores_gets_the_cores(
        digits_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = open_model(digits_bundle)
    asked = model.bundle.profile["threads"]
    assert asked > 1 and model.backend.threads == min(asked, cpu_count())
    monkeypatch.setattr("edge_runtime.model.cpu_count", lambda: 1)
    assert open_model(digits_bundle).backend.threads == 1
    assert open_model(digits_bundle, threads=3).backend.threads == 3  # asked for: kept
