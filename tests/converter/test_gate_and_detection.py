"""The gate decided on evidence, recovery that keeps the profile's integer ends, and detection
through the converter: on models trained here on real photographs (``support.trained``).

- a third-party-style ``.h5`` (BatchNorm CNN, gray 64x64 in [-1, 1], 7 classes) with 40
  calibration images and no validation set: a fully integer rpi4 bundle, its agreement with an
  interval, and a summary saying why no recovery ran;
- a detector with one YOLOv8-layout output: mAP@0.5 float vs int8 and box agreement, with
  intervals, its decoder in the manifest; without ground truth the box disagreement fails the
  gate and the recovery's candidates keep integer input and output;
- the same detector with pixel coordinates in the score tensor is refused before quantizing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from support.models import tensor_dtypes
from support.trained import DETECTION_FLAGS, Trained, edge_convert

from converters.box_labels import yolo_truths
from converters.evidence import EXIT_CODES
from edge_runtime.monitor.reference import Reference

pytestmark = pytest.mark.slow


def manifest_of(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    return data


def io_dtypes(model: Path) -> tuple[str, str]:
    interp = Interpreter(model_path=str(model))
    return (np.dtype(interp.get_input_details()[0]["dtype"]).name,
            np.dtype(interp.get_output_details()[0]["dtype"]).name)


def inside(figure: dict[str, Any]) -> bool:
    low, high = figure["ci95"]
    return bool(low <= figure["value"] <= high)


# --- a third-party classifier, 40 calibration images, no validation set -----------------------


@pytest.fixture(scope="module")
def vendor(trained: Trained, tmp_path_factory: pytest.TempPathFactory,
           ) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("vendor")
    t = trained.third_party
    result = edge_convert("convert", t.model, "--profile", "rpi4", "--calibration",
                          t.calibration, "--labels", t.labels, "--input-mean", "127.5",
                          "--input-std", "127.5", "--color", "GRAY", "--out", out)
    return result, out / "vendor_cnn-rpi4"


def test_forty_images_give_a_fully_integer_bundle_and_no_recovery_on_noise(
        vendor: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, bundle = vendor
    manifest = manifest_of(bundle)
    gate = manifest["gate"]
    assert result.returncode == EXIT_CODES[gate["status"]], result.stderr[-3000:]
    assert gate["status"] in ("pass", "undecided"), gate
    assert tensor_dtypes(bundle / "model.tflite") <= {"int8", "int32"}
    assert io_dtypes(bundle / "model.tflite") == ("int8", "int8")
    assert manifest["metrics"]["fully_integer"] is True and manifest["recovery"] is None
    # Held out: a fifth of the 40; every figure carries its count and interval.
    intervals = manifest["metrics"]["intervals"]
    held = manifest["metrics"]["samples"]
    assert held == 8 and manifest["metrics"]["evaluated_on"] == "held-out"
    for name in ("agreement", "float_accuracy", "int8_accuracy"):
        assert intervals[name]["n"] == held and inside(intervals[name]), intervals
    # Agreement measured on every calibration image too, beside the gate.
    every = intervals["calibration_agreement"]
    assert every["n"] == 40 and inside(every)
    assert every["ci95"][1] - every["ci95"][0] < intervals["agreement"]["ci95"][1] - \
        intervals["agreement"]["ci95"][0]
    low, high = gate["ci95_points"]
    assert (gate["status"] == "undecided") == (low <= gate["max_drop_points"] < high)
    if gate["status"] == "undecided":
        assert gate["samples_to_decide"] > held
        assert "no recovery:" in result.stdout and "within noise" in result.stdout
        assert "gate undecided for rpi4" in result.stderr


def test_the_undecided_bundle_is_usable_and_verify_measures_it(
        vendor: tuple[subprocess.CompletedProcess[str], Path], trained: Trained) -> None:
    _, bundle = vendor
    checked = edge_convert("verify", bundle, "--data", trained.third_party.other, "--json")
    assert checked.returncode in (0, 3), checked.stderr[-2000:]
    report = json.loads(checked.stdout)
    assert report["samples"] == 58 and report["fully_integer"] is True
    assert report["accuracy"] is not None and report["accuracy"] > 0.6, report
    low, high = report["accuracy_ci95"]
    assert low <= report["accuracy"] <= high
    floor = report["manifest_float_accuracy"] - 0.01
    assert (checked.returncode == 3) == (high < floor)


# --- a detector: boxes, decoder, gate on mAP ---------------------------------------------------


def test_a_detector_is_verified_on_boxes_and_names_its_decoder(
        detector_convert: tuple[subprocess.CompletedProcess[str], Path],
        trained: Trained) -> None:
    result, bundle = detector_convert
    manifest = manifest_of(bundle)
    gate = manifest["gate"]
    assert result.returncode == EXIT_CODES[gate["status"]], result.stderr[-3000:]
    assert gate["basis"] == "mAP" and gate["status"] != "fail", gate
    assert manifest["task"] == "detection"
    assert manifest["decoder"] == {"decoder": "yolov8", "score_threshold": 0.25}
    assert (bundle / "labels.txt").read_text().split() == ["circle", "square", "triangle"]
    assert tensor_dtypes(bundle / "model.tflite") <= {"int8", "int32"}
    detection = manifest["metrics"]["detection"]
    intervals = manifest["metrics"]["intervals"]
    images = sorted(trained.detector.val.glob("*.png"))
    assert detection["images"] == len(images) and detection["ground_truth"] is True
    objects = sum(len(yolo_truths(p, 3)) for p in images)
    assert objects > len(images)
    for name in ("map50_float", "map50_int8", "box_agreement", "map50_drop_points"):
        assert intervals[name]["n"] == len(images) and inside(intervals[name]), intervals
    assert detection["map50_float"] > 0.3 and detection["map50_int8"] > 0.3, detection
    assert detection["box_agreement"] > 0.8, detection
    drop = intervals["map50_drop_points"]["value"]
    assert drop == pytest.approx(100 * (detection["map50_float"] - detection["map50_int8"]),
                                 abs=0.01)
    assert "mAP" in result.stdout
    # what the board's monitor compares its detections per frame with
    reference = Reference.from_stats(manifest["reference_stats"])
    assert reference.detections is not None
    assert abs(sum(reference.detections.shares) - 1.0) < 1e-3
    assert 0 < manifest["reference_stats"]["detections_per_frame"]["mean"] < 10


def test_without_ground_truth_the_box_disagreement_gates_and_recovery_keeps_integer_ends(
        trained: Trained, tmp_path: Path) -> None:
    unlabelled = tmp_path / "val"
    unlabelled.mkdir()
    for image in sorted(trained.detector.val.glob("*.png"))[:40]:
        (unlabelled / image.name).write_bytes(image.read_bytes())
    d = trained.detector
    result = edge_convert("convert", d.model, "--profile", "rpi4", "--calibration", d.train,
                          "--validation", unlabelled, "--labels", d.labels, *DETECTION_FLAGS,
                          "--samples", "64", "--out", tmp_path / "out")
    manifest = manifest_of(tmp_path / "out" / "detector-rpi4")
    gate = manifest["gate"]
    assert result.returncode == EXIT_CODES[gate["status"]], result.stderr[-3000:]
    assert gate["basis"] == "box disagreement" and "map50_float" not in \
        manifest["metrics"]["intervals"]
    # Box agreement below 99% with its whole interval: evidence of more than the 1 allowed.
    assert gate["status"] == "fail" and gate["ci95_points"][0] > 1.0, gate
    recovery = manifest["recovery"]
    assert recovery["attempted"] is True and recovery["attempts"], recovery
    sizes = [len(a["float_layers"]) for a in recovery["attempts"]]
    assert sizes == sorted(sizes) and sizes[0] == 1
    for attempt in recovery["attempts"]:
        assert "error" not in attempt, attempt
        assert (attempt["input_dtype"], attempt["output_dtype"]) == ("int8", "int8"), attempt
        assert attempt["float_tensors"] > 0
    full = recovery["full_int8"]
    assert full["float_tensors"] == 0 and full["size_bytes"] > 0 and inside(full["agreement"])
    shipped = tmp_path / "out" / "detector-rpi4" / "model.tflite"
    assert io_dtypes(shipped) == ("int8", "int8")
    if not recovery["recovered"]:
        assert tensor_dtypes(shipped) <= {"int8", "int32"}


def test_a_detector_mixing_pixel_coordinates_and_scores_is_refused(
        trained: Trained, tmp_path: Path) -> None:
    d = trained.detector
    out = tmp_path / "out"
    result = edge_convert("convert", d.pixels, "--profile", "rpi4", "--calibration", d.train,
                          "--validation", d.val, "--labels", d.labels, *DETECTION_FLAGS,
                          "--out", out)
    assert result.returncode == 2, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "refused before quantizing" in error[0]
    assert "class scores" in error[0] and "one scale" in error[0] and "[0, 1]" in error[0]
    assert not out.exists() or not any(out.iterdir())
