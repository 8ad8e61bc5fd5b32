"""Refuse calibration data that would quietly ruin an int8 model.

Calibrating the digits sample on all-black frames takes its int8 accuracy from 97% to 10%; no
warning in a log would have saved that user. Every check says what is wrong with the data and how
to fix it; ``--allow-poor-calibration`` overrides.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_runtime.preprocess import InputSpec

from .data import Dataset

MIN_SAMPLES = 20
FLAT_PIXEL_STD = 2.0        # a frame whose pixels vary less than this (0-255 scale) shows nothing
FLAT_FRACTION = 0.5         # refuse when more than half the frames are flat
DUPLICATE_FRACTION = 0.9    # refuse when 90% of the frames are one and the same


def check_calibration(data: Dataset, spec: InputSpec, labels: Sequence[str] | None,
                      minimum: int = MIN_SAMPLES) -> list[str]:
    """Problems with ``data`` as calibration for ``spec``; empty when it looks sound."""
    problems: list[str] = []
    if len(data) < minimum:
        problems.append(f"only {len(data)} calibration samples; at least {minimum} are needed "
                        "(300 recommended)")
    if spec.is_image:
        problems += _image_checks(data, spec)
    else:
        problems += _sensor_checks(data, spec)
    if labels and data.labels is not None:
        present = set(int(v) for v in np.unique(data.labels))
        missing = [name for i, name in enumerate(labels) if i not in present]
        if missing:
            problems.append(f"class(es) {', '.join(missing[:8])} have no calibration samples")
    return problems


def _image_checks(data: Dataset, spec: InputSpec) -> list[str]:
    problems: list[str] = []
    sample = data.items if len(data) <= 512 else data.items[:: len(data) // 512 + 1]
    lows = np.array([float(np.min(x)) for x in sample])
    highs = np.array([float(np.max(x)) for x in sample])
    if np.any(lows < 0) or np.any(highs > 255):
        problems.append(
            f"pixel values span [{lows.min():.3g}, {highs.max():.3g}]; calibration data must be "
            "raw pixels in [0, 255] — the converter applies (pixel - mean) / std itself")
        return problems
    # Float frames within [0, 1] count in steps of 1/255: a dark uint8 frame is not "normalised".
    unit_range = highs.max() <= 1.0 and all(np.asarray(x).dtype.kind == "f" for x in sample)
    step = 1.0 / 255.0 if unit_range else 1.0
    std = np.asarray(spec.std, dtype=np.float64)
    if unit_range and np.all(std > 1.5):
        problems.append(
            f"pixel values are all within [0, 1] but --input-std {_fmt(spec.std)} implies raw "
            "pixels in [0, 255]; the data looks already normalised (pass raw pixels, or set "
            "--input-mean 0 --input-std 1)")
    spreads = np.array([float(np.std(np.asarray(x, dtype=np.float32))) for x in sample])
    flat = float(np.mean(spreads < FLAT_PIXEL_STD * step))
    if flat > FLAT_FRACTION:
        problems.append(f"{flat:.0%} of the calibration frames are constant or nearly so "
                        f"(pixel std < {FLAT_PIXEL_STD} on a 0-255 scale); use frames that show "
                        "real scenes")
    elif _mostly_duplicates(sample, step):
        problems.append("the calibration frames are nearly all the same image; use varied frames")
    return problems


def _mostly_duplicates(sample: Sequence[np.ndarray], step: float) -> bool:
    if len(sample) < 4:
        return False
    first = np.asarray(sample[0], dtype=np.float32)
    same = 0
    for x in sample:
        xs = np.asarray(x, dtype=np.float32)
        if xs.shape == first.shape and float(np.mean(np.abs(xs - first))) < step:
            same += 1
    return same / len(sample) >= DUPLICATE_FRACTION


def _sensor_checks(data: Dataset, spec: InputSpec) -> list[str]:
    values = np.stack([np.asarray(x, dtype=np.float64).reshape(-1) for x in data.items])
    if float(np.std(values)) < 1e-9:
        return ["the calibration windows are all constant; use real sensor recordings"]
    z = (values - np.mean(spec.mean)) / np.mean(spec.std)
    if float(np.mean(np.abs(z) > 50)) > 0.5:
        return [f"with --input-mean {_fmt(spec.mean)} and --input-std {_fmt(spec.std)} most "
                "normalised values exceed ±50; the declared mean/std do not match the data"]
    return []


def _fmt(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)
