"""Shared fixtures: real sample data (scikit-learn digits), a trained Keras model and a real bundle.

Training and converting take ~40 s, so they happen once per test session; the tiers that need no
model (``tests/unit``) never ask for them. The Mosquitto fixtures come from ``support.mosquitto``.

Tiers: ``unit`` (device install only: no TensorFlow, no broker), ``converter`` (TensorFlow),
``integration`` (a real Mosquitto, real converted models), ``e2e`` (the real CLIs in subprocesses).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["support.mosquitto", "support.daemon", "support.trained"]
BIN = Path(sys.executable).parent


def cli(name: str) -> str:
    """Path of a console script installed next to the test interpreter."""
    path = BIN / name
    return str(path) if path.exists() else name


def run_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([cli(args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with images/train, images/val (class folders), labels.txt, digits.keras, digits.mp4."""
    from converters.samples import make_digits

    root = tmp_path_factory.mktemp("digits")
    make_digits(root, epochs=12)
    return root


@pytest.fixture(scope="session")
def digits_bundle(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real rpi4 int8 bundle converted by the real CLI."""
    out = tmp_path_factory.mktemp("bundles")
    result = run_cli(
        "edge-convert", "convert", str(digits / "digits.keras"), "--profile", "rpi4",
        "--calibration", str(digits / "images" / "train"),
        "--validation", str(digits / "images" / "val"), "--labels", str(digits / "labels.txt"),
        "--input-mean", "0", "--input-std", "255", "--color", "GRAY", "--name", "digits",
        "--out", str(out),
    )
    assert result.returncode == 0, result.stderr
    return out / "digits-rpi4"


@pytest.fixture(scope="session")
def poorly_calibrated_bundle(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits model calibrated on black frames (``--allow-poor-calibration``), version
    ``2-poor``: about 10% accurate, written although it misses the gate."""
    import cv2
    import numpy as np

    root = tmp_path_factory.mktemp("poor")
    labels = (digits / "labels.txt").read_text().split()
    for label in labels:
        (root / "black" / label).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(root / "black" / label / f"{i}.png"), np.zeros((48, 48, 3), np.uint8))
    result = run_cli(
        "edge-convert", "convert", str(digits / "digits.keras"), "--profile", "rpi4",
        "--calibration", str(root / "black"), "--validation", str(digits / "images" / "val"),
        "--labels", str(digits / "labels.txt"), "--input-mean", "0", "--input-std", "255",
        "--color", "GRAY", "--name", "digits", "--version", "2-poor",
        "--allow-poor-calibration", "--recover", "off", "--out", str(root / "out"))
    assert result.returncode in (0, 3), result.stderr
    return root / "out" / "digits-rpi4"
