"""The converter writes what the board watches against: reference statistics the monitor reads and
golden samples the self-test replays, measured with the daemon's own functions."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.model import open_model
from edge_runtime.monitor.golden import GOLDEN_FILE, GoldenMismatch, read_golden, self_test
from edge_runtime.monitor.health import HealthMonitor, MonitorSettings
from edge_runtime.monitor.reference import Reference
from edge_runtime.postprocess.types import dequantize

pytestmark = pytest.mark.slow


def val_images(digits: Path) -> list[tuple[np.ndarray, str]]:
    root = digits / "images" / "val"
    return [(cv2.imread(str(p), cv2.IMREAD_ANYCOLOR), p.parent.name)
            for p in sorted(root.rglob("*.png"))]


def test_the_bundle_carries_the_reference_the_monitor_reads(digits_bundle: Path) -> None:
    stats = json.loads((digits_bundle / "manifest.json").read_text())["reference_stats"]
    reference = Reference.from_stats(stats)
    assert reference.top1 is not None and reference.margin is not None
    assert reference.brightness is not None and reference.accuracy is not None
    assert 0.9 < reference.accuracy <= 1.0 and reference.temperature > 0
    assert 0 <= stats["input"]["saturated_share"] < 0.9
    assert abs(sum(reference.top1.shares) - 1.0) < 1e-3


def test_golden_samples_replay_on_the_loaded_model_and_catch_a_changed_preprocessing(
        digits_bundle: Path) -> None:
    samples = read_golden(digits_bundle / GOLDEN_FILE)
    assert 1 <= len(samples) <= 16
    model = open_model(digits_bundle, threads=1)
    assert self_test(model.backend, model.spec, samples) == len(samples)
    inverted = model.spec.with_quantization(model.spec.dtype, model.spec.scale * 3,
                                            model.spec.zero_point)
    with pytest.raises(GoldenMismatch, match="sample 0, output 0"):
        self_test(model.backend, inverted, samples)


def test_estimated_accuracy_on_clean_data_is_within_five_points_of_the_truth(
        digits: Path, digits_bundle: Path) -> None:
    model = open_model(digits_bundle, threads=1)
    manifest = json.loads((digits_bundle / "manifest.json").read_text())
    labels = model.bundle.labels
    images = val_images(digits)
    monitor = HealthMonitor(Reference.from_stats(manifest["reference_stats"]), labels,
                            budget_ms=None, settings=MonitorSettings(window=len(images)))
    out = model.outputs[0]
    correct = 0
    report = None
    for image, truth in images:
        outcome, _ = model.run(image)
        raw = model.backend.get_outputs()[0]
        scores = dequantize(raw, out.scale, out.zero_point).reshape(-1)
        probs = scores if manifest["postprocess"].get("softmax") is False else \
            np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
        correct += int(outcome.top_label == truth)
        report = monitor.observe(latency_ms=1.0, probabilities=probs, frame=image)
    assert report is not None
    true_accuracy = correct / len(images)
    assert abs(report["estimated_accuracy"] - true_accuracy) <= 0.05, report
    assert report["verdict"] == "ok", report["reasons"]
