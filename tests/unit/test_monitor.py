"""The health monitor against a reference built the way the converter builds it."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.monitor.health import HealthMonitor, MonitorSettings
from edge_runtime.monitor.reference import (
    SCORE_EDGES,
    Reference,
    calibrated,
    fit_temperature,
    histogram,
    input_statistics,
    margins,
    psi,
)

LABELS = ["a", "b", "c", "d"]
RNG = np.random.default_rng(0)


def scenes(count: int, brightness: float = 120.0) -> list[np.ndarray]:
    """Textured frames whose mean brightness varies around ``brightness``."""
    frames = []
    for _ in range(count):
        base = RNG.normal(brightness, 15.0)
        frames.append(np.clip(RNG.normal(base, 30.0, (96, 128, 3)), 0, 255).astype(np.uint8))
    return frames


def probabilities(count: int, classes: list[int] | None = None, confidence: float = 3.0,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Softmax outputs of a model that is right about 85% of the time."""
    truth = np.asarray(classes if classes is not None else RNG.integers(0, 4, count))
    logits = RNG.normal(0, 1, (count, 4))
    right = RNG.random(count) < 0.85
    predicted = np.where(right, truth, (truth + 1) % 4)
    logits[np.arange(count), predicted] += confidence
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True), truth


def reference() -> Reference:
    probs, truth = probabilities(2000)
    share = np.bincount(probs.argmax(axis=1), minlength=4) / len(probs)
    stats = {
        "predicted_class_share": dict(zip(LABELS, share.tolist(), strict=True)),
        "histograms": {"top1_score": histogram(probs.max(axis=1), SCORE_EDGES).to_json(),
                       "margin": histogram(margins(probs), SCORE_EDGES).to_json()},
        "input": input_statistics(scenes(300)),
        "temperature": fit_temperature(probs, truth),
        "accuracy": float(np.mean(probs.argmax(axis=1) == truth)),
    }
    return Reference.from_stats(stats)


def run_window(monitor: HealthMonitor, probs: np.ndarray, frames: list[np.ndarray],
               ) -> dict[str, object]:
    report = None
    for i, p in enumerate(probs):
        report = monitor.observe(latency_ms=2.0, probabilities=p, frame=frames[i % len(frames)])
    assert report is not None, "the window did not close"
    return report


def monitor(window: int = 400, **kw: float) -> HealthMonitor:
    return HealthMonitor(reference(), LABELS, budget_ms=50.0,
                         settings=MonitorSettings(window=window, **kw))  # type: ignore[arg-type]


def test_data_like_the_reference_is_ok_window_after_window() -> None:
    m = monitor()
    for _ in range(3):
        probs, _ = probabilities(400)
        report = run_window(m, probs, scenes(400))
        assert report["verdict"] == "ok", report["reasons"]
        assert report["schema"] == "edge-health/1"


def test_estimated_accuracy_is_close_to_the_true_one() -> None:
    m = monitor()
    probs, truth = probabilities(400)
    report = run_window(m, probs, scenes(400))
    true_accuracy = float(np.mean(probs.argmax(axis=1) == truth))
    assert abs(float(report["estimated_accuracy"]) - true_accuracy) < 0.05  # type: ignore[arg-type]


def test_darkened_frames_raise_an_alarm_naming_brightness() -> None:
    probs, _ = probabilities(400)
    report = run_window(monitor(), probs, scenes(400, brightness=35.0))
    assert report["verdict"] == "alarm"
    assert any("brightness" in r for r in report["reasons"])  # type: ignore[attr-defined]


def test_one_class_only_raises_an_alarm_naming_the_class_mix() -> None:
    probs, _ = probabilities(400, classes=[2] * 400)
    report = run_window(monitor(), probs, scenes(400))
    assert report["verdict"] == "alarm"
    assert any("class mix" in r for r in report["reasons"])  # type: ignore[attr-defined]


def test_unsure_outputs_lower_the_estimated_accuracy_into_an_alarm() -> None:
    probs, _ = probabilities(400, confidence=0.3)
    report = run_window(monitor(), probs, scenes(400))
    assert report["verdict"] == "alarm"
    assert any("estimated accuracy" in r for r in report["reasons"])  # type: ignore[attr-defined]


def test_frozen_and_blank_frames_are_alarms() -> None:
    probs, _ = probabilities(400)
    frozen = run_window(monitor(), probs, scenes(1))
    assert any("frozen" in r for r in frozen["reasons"])  # type: ignore[attr-defined]
    blank = run_window(monitor(), probs, [np.full((96, 128, 3), 128, np.uint8)])
    assert any("blank" in r for r in blank["reasons"])  # type: ignore[attr-defined]


def test_a_window_closed_by_time_with_few_results_is_reported_but_not_judged() -> None:
    now = [0.0]
    m = HealthMonitor(reference(), LABELS, budget_ms=None,
                      settings=MonitorSettings(window=500, max_window_s=10.0),
                      clock=lambda: now[0])
    probs, _ = probabilities(5, classes=[1] * 5)
    assert m.observe(latency_ms=1.0, probabilities=probs[0]) is None
    now[0] = 11.0
    report = m.observe(latency_ms=1.0, probabilities=probs[1])
    assert report is not None and report["verdict"] == "ok"
    assert "not judged" in report["reasons"][0]


def test_latency_over_the_budget_warns() -> None:
    m = HealthMonitor(reference(), LABELS, budget_ms=1.0, settings=MonitorSettings(window=100))
    probs, _ = probabilities(100)
    frames = scenes(100)
    report = None
    for i, p in enumerate(probs):
        report = m.observe(latency_ms=3.0, probabilities=p, frame=frames[i])
    assert report is not None and report["verdict"] == "warn"
    assert any("budget" in r for r in report["reasons"])


def test_a_bundle_without_the_new_reference_fields_is_never_judged_on_them() -> None:
    m = HealthMonitor(Reference.from_stats({"samples": 10}), LABELS, budget_ms=None,
                      settings=MonitorSettings(window=50))
    probs, _ = probabilities(50, classes=[0] * 50)
    report = run_window(m, probs, scenes(50, brightness=10.0))
    assert report["verdict"] == "ok" and report["psi"] == {}


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift() -> None:
    same = [0.25, 0.25, 0.25, 0.25]
    assert psi(same, same) == pytest.approx(0.0)
    assert 0 < psi(same, [0.3, 0.2, 0.25, 0.25]) < psi(same, [0.7, 0.1, 0.1, 0.1])


def test_temperature_fit_softens_an_overconfident_model() -> None:
    probs, truth = probabilities(2000, confidence=8.0)  # 85% right but ~100% sure
    accuracy = float(np.mean(probs.argmax(axis=1) == truth))
    t = fit_temperature(probs, truth)
    assert t > 1.5
    assert abs(float(calibrated(probs, t).max(axis=1).mean()) - accuracy) < 0.01
    assert abs(float(probs.max(axis=1).mean()) - accuracy) > 0.1


def test_a_colour_cast_that_keeps_the_brightness_is_caught_by_the_channel_means() -> None:
    cast = []
    for frame in scenes(400):
        shifted = frame.astype(np.int16)
        shifted[..., 0] -= 45
        shifted[..., 2] += 45
        cast.append(np.clip(shifted, 0, 255).astype(np.uint8))
    probs, _ = probabilities(400)
    report = run_window(monitor(), probs, cast)
    assert report["verdict"] == "alarm"
    assert any("input channel" in r for r in report["reasons"])  # type: ignore[attr-defined]
    assert "brightness" not in report["psi"] or float(report["psi"]["brightness"]) < 0.25  # type: ignore[index]
    clean = run_window(monitor(), probs, scenes(400))
    assert max(clean["channel_shift_sd"]) < 1.0  # type: ignore[arg-type]
