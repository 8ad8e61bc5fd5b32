"""Optimization requests that cannot work are refused with one line (exit 2) before any
training: bad sparsities, missing or unlabelled training data, contradictory flags, a teacher
whose layers cannot be narrowed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from support.daemon import edge_convert
from test_convert_cli import DIGITS_FLAGS, assert_refused

# Keras 3 in a child, as in the converter: a model with a Reshape to a channel count.
RESHAPED = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
from converters.optimize.narrow import narrower
from converters.tfjob import JobError
L = keras.layers
model = keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(8, 3), L.Flatten(),
                          L.Reshape((26 * 26, 8), name="to_channels"), L.GlobalAveragePooling1D(),
                          L.Dense(10, activation="softmax")])
try:
    narrower(model, 0.5)
except JobError as exc:
    print(exc)
    sys.exit(0)
sys.exit(1)
"""


def digits_convert(digits: Path, out: Path, *extra: str | Path) -> subprocess.CompletedProcess[str]:
    return edge_convert("convert", digits / "digits.keras", "--profile", "rpi4",
                        "--calibration", digits / "images" / "train",
                        "--validation", digits / "images" / "val",
                        "--labels", digits / "labels.txt", *DIGITS_FLAGS, "--out", out, *extra)


@pytest.mark.parametrize(("extra", "phrases"), [
    (("--prune", "0.5"), ("--prune", "--train")),
    (("--qat",), ("--qat", "--train")),
    (("--prune", "1.5", "--train", "x"), ("--prune 1.5", "between 0 and 1")),
    (("--prune", "0", "--train", "x"), ("between 0 and 1",)),
    (("--prune", "0.5", "--train", "missing"), ("training data missing", "does not exist")),
])
def test_impossible_requests_are_refused_before_training(digits: Path, tmp_path: Path,
                                                         extra: tuple[str, ...],
                                                         phrases: tuple[str, ...]) -> None:
    assert_refused(digits_convert(digits, tmp_path / "out", *extra), *phrases)
    assert not (tmp_path / "out").exists()


def test_qat_refuses_a_float_profile(digits: Path, tmp_path: Path) -> None:
    result = edge_convert("convert", digits / "digits.keras", "--profile", "jetson-nano",
                          "--calibration", digits / "images" / "train", "--train",
                          digits / "images" / "train", "--qat", "--out", tmp_path / "out")
    assert_refused(result, "--qat", "jetson-nano", "float16")


def test_unlabelled_training_data_is_refused(digits: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted((digits / "images" / "train" / "digit_3").glob("*.png"))):
        cv2.imwrite(str(flat / f"{i:03d}.png"), cv2.imread(str(path)))
    assert_refused(digits_convert(digits, tmp_path / "out", "--prune", "0.5", "--train", flat),
                   "training data", "no labels")


@pytest.mark.parametrize(("extra", "phrases"), [
    (("--student-width", "0.5", "--student", "s.keras"), ("--student", "--student-width")),
    ((), ("--student", "--student-width")),
    (("--student-width", "2"), ("--student-width 2", "between 0 and 1")),
    (("--student-width", "0.5", "--alpha", "1.5"), ("--alpha",)),
])
def test_distill_refuses_contradictory_flags(digits: Path, tmp_path: Path,
                                             extra: tuple[str, ...],
                                             phrases: tuple[str, ...]) -> None:
    result = edge_convert("distill", digits / "digits.keras", "--train",
                          digits / "images" / "train", "--validation", digits / "images" / "val",
                          "--out", tmp_path / "student.keras", *extra)
    assert_refused(result, *phrases)
    assert not (tmp_path / "student.keras").exists()


def test_a_layer_that_fixes_a_width_is_named() -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", RESHAPED], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    message = done.stdout.strip()
    assert "to_channels" in message and "Reshape" in message and "--student FILE" in message
    assert "\n" not in message
