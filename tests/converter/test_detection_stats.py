"""The bootstrap behind the detection figures: its point estimate is the plain mAP, and its
interval narrows with more images (pure NumPy)."""

from __future__ import annotations

import numpy as np
import pytest

from converters.detection_eval import Det, Truth, mean_average_precision
from converters.detection_stats import bootstrap_drop, resample_weights, weighted_map


def scenes(count: int, seed: int, miss: float) -> tuple[list[list[Det]], list[list[Truth]]]:
    rng = np.random.default_rng(seed)
    dets: list[list[Det]] = []
    truths: list[list[Truth]] = []
    for _ in range(count):
        gts, found = [], []
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0, 0.7, 2)
            cls = int(rng.integers(0, 3))
            gts.append(Truth(cls, (x, y, x + 0.2, y + 0.2)))
            if rng.random() > miss:
                dx = rng.normal(0, 0.03)
                found.append(Det(cls, float(rng.uniform(0.3, 1)), (x + dx, y, x + 0.2 + dx, y + 0.2)))
            if rng.random() < miss:
                found.append(Det(int(rng.integers(0, 3)), float(rng.uniform(0.2, 0.6)),
                                 (0.5, 0.5, 0.7, 0.7)))
        dets.append(found)
        truths.append(gts)
    return dets, truths


def test_the_point_estimate_is_the_plain_map() -> None:
    dets, truths = scenes(60, 1, 0.3)
    plain = mean_average_precision(dets, truths, 3)["map50"]
    assert weighted_map(dets, truths, 3, np.ones((1, 60)))[0] == pytest.approx(plain, abs=1e-5)
    twice = weighted_map(dets + dets, truths + truths, 3, np.ones((1, 120)))[0]
    doubled = weighted_map(dets, truths, 3, np.full((1, 60), 2.0))[0]
    assert doubled == pytest.approx(twice, abs=1e-9)


def test_the_interval_holds_the_estimate_and_narrows_with_images() -> None:
    widths = []
    for count in (40, 400):
        floats, truths = scenes(count, 2, 0.1)
        int8, _ = scenes(count, 2, 0.3)
        stats = bootstrap_drop(floats, int8, truths, 3, resamples=300)
        drop = stats["map50_drop_points"]
        assert drop["ci95"][0] <= drop["value"] <= drop["ci95"][1]
        assert drop["value"] > 0          # the int8 side misses more
        widths.append(drop["ci95"][1] - drop["ci95"][0])
    assert widths[1] < widths[0] / 2
    assert resample_weights(5, 10).sum(axis=1).tolist() == [5.0] * 11
