"""``edge-convert`` end to end: the real CLI in a subprocess on the real digits model and data.

Cheap refusals come first (no TensorFlow needed), then refusals found by the model, then real
conversions; each conversion runs once per module and several tests read its bundle. The numbers
a manifest claims are recomputed here with LiteRT and this file's own preprocessing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from support.daemon import edge_convert
from support.models import independent_accuracy, tensor_dtypes

if TYPE_CHECKING:  # the fixtures' types; pytest hands over the objects
    from conftest import CalibrationSets, DigitModels

SHIPPED = {"rpi4", "rpi5", "rpi-zero2w", "jetson-nano", "jetson-orin", "coral-usb", "x86-cpu"}
DIGITS_FLAGS = ("--input-mean", "0", "--input-std", "255", "--color", "GRAY")
MANIFEST_KEYS = {"schema", "name", "version", "created", "task", "model_file", "sha256",
                 "profile", "input", "outputs", "metrics", "calibration", "versions",
                 "reference_stats"}
METRIC_KEYS = {"float_accuracy", "int8_accuracy", "agreement", "samples", "size_bytes",
               "float_size_bytes", "host_latency_ms"}


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def assert_refused(result: subprocess.CompletedProcess[str], *phrases: str) -> str:
    """Exit 2 with exactly one ``error:`` line naming the problem, and no traceback."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def labels_of(digits: Path) -> list[str]:
    return (digits / "labels.txt").read_text().split()


def manifest_of(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    return data


def convert_digits(model: Path, out: Path, digits: Path, *extra: str | Path,
                   ) -> subprocess.CompletedProcess[str]:
    return edge_convert("convert", model, "--labels", digits / "labels.txt", *DIGITS_FLAGS,
                        "--out", out, *extra)


# --- cheap refusals: nothing reaches TensorFlow -----------------------------------------------


def test_profiles_json_lists_every_shipped_profile() -> None:
    result = edge_convert("profiles", "--json")
    assert result.returncode == 0, result.stderr
    profiles = {p["name"]: p for p in json.loads(result.stdout)}
    assert set(profiles) >= SHIPPED
    for profile in profiles.values():
        assert profile["quantization"] in {"int8", "float16", "dynamic", "float32"}
        assert profile["io_dtype"] in {"int8", "uint8", "float32"}
        assert profile["description"]
    assert profiles["coral-usb"]["accelerator"] == "edgetpu"
    assert profiles["coral-usb"]["io_dtype"] == "uint8"


def test_unknown_profile_is_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = edge_convert("convert", tmp_path / "absent.keras", "--profile", "rpi4",
                          "--profile", "rpi-9000", "--calibration", tmp_path, "--out", out)
    assert_refused(result, "unknown profile 'rpi-9000'", "rpi4")
    assert not out.exists()


def test_missing_model_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = edge_convert("convert", tmp_path / "absent.keras", "--profile", "rpi4",
                          "--calibration", tmp_path, "--out", out)
    assert_refused(result, "absent.keras does not exist")
    assert not out.exists()


@pytest.mark.parametrize(("name", "content", "phrase"), [
    ("digits.keras", b"PK\x03\x04 truncated archive", "not a valid .keras file"),
    ("digits.h5", os.urandom(4096), "not a valid HDF5 file"),
    ("digits.onnx", b"\x08\x07", "expected a .keras or .h5 file or a SavedModel directory"),
])
def test_corrupt_or_foreign_model_files_are_refused(tmp_path: Path, name: str, content: bytes,
                                                    phrase: str) -> None:
    model, out = tmp_path / name, tmp_path / "out"
    model.write_bytes(content)
    result = edge_convert("convert", model, "--profile", "rpi4", "--calibration", tmp_path,
                          "--out", out)
    assert_refused(result, name, phrase)
    assert not out.exists()


def test_directory_that_is_not_a_savedmodel_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    out = tmp_path / "out"
    result = edge_convert("convert", tmp_path / "model", "--profile", "rpi4", "--calibration",
                          tmp_path, "--out", out)
    assert_refused(result, "not a SavedModel (no saved_model.pb)")
    assert not out.exists()


def test_class_folders_that_do_not_match_the_labels_are_refused(
        digits: Path, calibration_sets: CalibrationSets, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = convert_digits(digits / "digits.keras", out, digits, "--profile", "rpi4",
                            "--calibration", calibration_sets.wrong_classes)
    assert_refused(result, "class folder(s) one, zero are not in the labels")
    assert not out.exists()


@pytest.mark.parametrize(("which", "phrase"), [
    ("empty", "no readable samples"),
    ("unreadable", "no readable samples (6 unreadable files)"),
    ("missing", "does not exist"),
])
def test_empty_unreadable_or_missing_calibration_is_refused(
        digits: Path, calibration_sets: CalibrationSets, tmp_path: Path, which: str,
        phrase: str) -> None:
    data = getattr(calibration_sets, which, tmp_path / "missing")
    out = tmp_path / "out"
    result = convert_digits(digits / "digits.keras", out, digits, "--profile", "rpi4",
                            "--calibration", data)
    assert_refused(result, phrase)
    assert not out.exists()


def test_bad_labels_files_are_refused(digits: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    train = digits / "images" / "train"
    dup = tmp_path / "dup.txt"
    dup.write_text("digit_0\ndigit_0\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    for labels, phrase in ((tmp_path / "none.txt", "does not exist"),
                           (empty, "is empty"), (dup, "duplicate labels")):
        result = edge_convert("convert", digits / "digits.keras", "--profile", "rpi4",
                              "--calibration", train, "--labels", labels, "--out", out)
        assert_refused(result, str(labels), phrase)
    assert not out.exists()


# --- refusals that need the model -------------------------------------------------------------


def test_a_layer_that_cannot_be_converted_is_named(
        digits: Path, digit_models: DigitModels, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("someone else's file")
    result = convert_digits(digit_models.unconvertible, out, digits, "--profile", "rpi4",
                            "--calibration", digits / "images" / "train")
    line = assert_refused(result, "cannot be converted", "MatrixDeterminant")
    assert len(line) < 400
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_labels_that_do_not_match_the_model_outputs_are_refused(
        digits: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    out = tmp_path / "out"
    result = edge_convert("convert", digits / "digits.keras", "--profile", "rpi4",
                          "--calibration", digits / "digits.mp4", "--labels", labels,
                          *DIGITS_FLAGS, "--out", out)
    assert_refused(result, "give 2 labels but the model outputs 10 classes")
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize(("which", "phrases"), [
    ("near_constant", ("calibration data refused", "constant or nearly so",
                       "--allow-poor-calibration")),
    ("unit_range_npz", ("all within [0, 1] but --input-std 255", "already normalised")),
    ("few_no_nine", ("only 9 calibration samples", "digit_9 have no calibration samples")),
])
def test_degenerate_calibration_is_refused(
        digits: Path, calibration_sets: CalibrationSets, tmp_path: Path, which: str,
        phrases: tuple[str, ...]) -> None:
    out = tmp_path / "out"
    result = convert_digits(digits / "digits.keras", out, digits, "--profile", "rpi4",
                            "--calibration", getattr(calibration_sets, which),
                            "--validation", digits / "images" / "val")
    assert_refused(result, *phrases)
    assert not out.exists()


# --- a real rpi4 bundle (folder calibration, .keras) ------------------------------------------


@pytest.mark.slow
def test_int8_bundle_is_fully_integer(digits_bundle: Path) -> None:
    model = digits_bundle / "model.tflite"
    assert tensor_dtypes(model) <= {"int8", "int32"}
    interp = Interpreter(model_path=str(model))
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8
    assert manifest_of(digits_bundle)["metrics"]["fully_integer"] is True


@pytest.mark.slow
def test_manifest_accuracy_matches_an_independent_recomputation(
        digits: Path, digits_bundle: Path) -> None:
    metrics = manifest_of(digits_bundle)["metrics"]
    accuracy, count = independent_accuracy(digits_bundle / "model.tflite",
                                           digits / "images" / "val", labels_of(digits))
    assert metrics["samples"] == count and metrics["evaluated_on"] == "validation"
    assert metrics["int8_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert accuracy > 0.9  # a real model on real digits, not a coincidence of two bugs


@pytest.mark.slow
def test_manifest_has_the_spec_fields_and_a_true_checksum(
        digits: Path, digits_bundle: Path) -> None:
    manifest = manifest_of(digits_bundle)
    assert set(manifest) >= MANIFEST_KEYS
    assert set(manifest["metrics"]) >= METRIC_KEYS
    model = digits_bundle / "model.tflite"
    assert manifest["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert manifest["metrics"]["size_bytes"] == model.stat().st_size
    assert manifest["metrics"]["float_size_bytes"] > 2 * manifest["metrics"]["size_bytes"]
    assert manifest["input"]["color"] == "GRAY" and manifest["input"]["std"] == 255.0
    assert manifest["input"]["shape"] == [1, 28, 28, 1]
    assert manifest["profile"]["name"] == "rpi4"
    assert manifest["gate"]["passed"] is True
    assert manifest["calibration"]["samples"] == 300
    assert manifest["calibration"]["source"].startswith("folder ")
    assert manifest["versions"]["tensorflow"] and manifest["versions"]["runtime"]
    shares = manifest["reference_stats"]["predicted_class_share"]
    assert set(shares) == set(labels_of(digits))
    assert (digits_bundle / "labels.txt").read_text().split() == labels_of(digits)
    assert not [p for p in digits_bundle.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_report_html_is_self_contained(digits_bundle: Path) -> None:
    page = (digits_bundle / "report.html").read_text()
    sources = re.findall(r'<img[^>]*\ssrc="([^"]+)"', page)
    assert len(sources) >= 3
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    assert not re.search(r'(src|href)="(https?:)?//', page)
    report = json.loads((digits_bundle / "report.json").read_text())
    assert report["layers"], "per-layer quantization error is missing"


@pytest.mark.slow
def test_verify_measures_what_the_manifest_claims(digits: Path, digits_bundle: Path) -> None:
    result = edge_convert("verify", digits_bundle, "--data", digits / "images" / "val", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    metrics = manifest_of(digits_bundle)["metrics"]
    assert report["sha256_ok"] is True and report["fully_integer"] is True
    assert report["samples"] == metrics["samples"]
    assert report["accuracy"] == pytest.approx(metrics["int8_accuracy"], abs=1e-4)
    text = edge_convert("verify", digits_bundle, "--data", digits / "images" / "val")
    assert text.returncode == 0 and re.search(r"accuracy: 0\.9\d+", text.stdout)


@pytest.mark.slow
def test_verify_refuses_a_tampered_bundle(digits: Path, digits_bundle: Path,
                                          tmp_path: Path) -> None:
    copy = tmp_path / digits_bundle.name
    shutil.copytree(digits_bundle, copy)
    data = bytearray((copy / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.tflite").write_bytes(bytes(data))
    result = edge_convert("verify", copy, "--data", digits / "images" / "val")
    assert_refused(result, "sha256 of model.tflite does not match")


@pytest.mark.slow
def test_verify_refuses_data_from_other_classes(digits_bundle: Path,
                                                calibration_sets: CalibrationSets) -> None:
    result = edge_convert("verify", digits_bundle, "--data", calibration_sets.wrong_classes)
    assert_refused(result, "are not in the labels")


@pytest.mark.slow
def test_verify_runs_the_data_hygiene_checks(digits_bundle: Path,
                                             calibration_sets: CalibrationSets) -> None:
    result = edge_convert("verify", digits_bundle, "--data", calibration_sets.black)
    assert_refused(result, "--allow-poor-data")
    forced = edge_convert("verify", digits_bundle, "--data", calibration_sets.black,
                          "--allow-poor-data", "--json")
    assert forced.returncode in (0, 3), forced.stderr
    assert json.loads(forced.stdout)["data_problems"]


# --- several profiles in one call: legacy .h5, .npz calibration, Edge TPU ---------------------


@pytest.fixture(scope="module")
def multi(digits: Path, digit_models: DigitModels, calibration_sets: CalibrationSets,
          tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("multi")
    # no edgetpu_compiler on this PATH, whatever the machine has installed
    tools = tmp_path_factory.mktemp("tools")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "edge-convert"), "convert", str(digit_models.h5),
         "--profile", "coral-usb", "--profile", "x86-cpu",
         "--calibration", str(calibration_sets.train_npz), "--samples", "200",
         "--validation", str(digits / "images" / "val"), "--labels", str(digits / "labels.txt"),
         *DIGITS_FLAGS, "--name", "digits", "--out", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "PATH": str(tools), "TF_CPP_MIN_LOG_LEVEL": "3"})
    return result, out


@pytest.mark.slow
def test_several_profiles_give_one_bundle_each(
        multi: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, out = multi
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["digits-coral-usb", "digits-x86-cpu"]
    rows = [line.split()[0] for line in result.stdout.splitlines()[2:4]]
    assert rows == ["coral-usb", "x86-cpu"]
    for name in ("coral-usb", "x86-cpu"):
        manifest = manifest_of(out / f"digits-{name}")
        assert manifest["profile"]["name"] == name
        assert manifest["calibration"]["samples"] == 200
        assert manifest["calibration"]["source"].startswith("npz ")


@pytest.mark.slow
def test_x86_bundle_from_h5_is_accurate(
        digits: Path, multi: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    bundle = multi[1] / "digits-x86-cpu"
    assert tensor_dtypes(bundle / "model.tflite") <= {"int8", "int32"}
    accuracy, _ = independent_accuracy(bundle / "model.tflite", digits / "images" / "val",
                                       labels_of(digits))
    assert manifest_of(bundle)["metrics"]["int8_accuracy"] == pytest.approx(accuracy, abs=1e-4)


@pytest.mark.slow
def test_edge_tpu_bundle_is_int8_with_uint8_io_and_a_preflight(
        digits: Path, multi: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, out = multi
    bundle = out / "digits-coral-usb"
    model = bundle / "model.tflite"
    interp = Interpreter(model_path=str(model))
    assert interp.get_input_details()[0]["dtype"] == np.uint8
    assert interp.get_output_details()[0]["dtype"] == np.uint8
    assert tensor_dtypes(model) <= {"uint8", "int8", "int32"}
    manifest = manifest_of(bundle)
    assert manifest["input"]["dtype"] == "uint8"
    preflight = manifest["edgetpu"]["preflight"]
    assert preflight["ok"] is True and preflight["cpu_ops"] == 0
    assert "CONV_2D" in preflight["op_names"]
    assert manifest["edgetpu"]["compiled"] is False
    message = manifest["edgetpu"]["message"]
    assert "edgetpu_compiler" in message and "installed" in message
    assert "edgetpu_compiler" in result.stderr
    accuracy, _ = independent_accuracy(model, digits / "images" / "val", labels_of(digits))
    assert manifest["metrics"]["int8_accuracy"] == pytest.approx(accuracy, abs=1e-4)


# --- SavedModel directory calibrated from a video ---------------------------------------------


@pytest.mark.slow
def test_savedmodel_calibrated_from_a_video_without_golden_samples(
        digits: Path, digit_models: DigitModels, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = convert_digits(digit_models.savedmodel, out, digits, "--profile", "rpi5",
                            "--calibration", digits / "digits.mp4", "--name", "sm",
                            "--validation", digits / "images" / "val", "--no-golden")
    assert result.returncode == 0, result.stderr[-3000:]
    bundle = out / "sm-rpi5"
    assert not (bundle / "golden.npz").exists() and (bundle / "model.tflite").is_file()
    manifest = manifest_of(bundle)
    assert manifest["calibration"]["source"].startswith("video ")
    assert manifest["gate"]["passed"] is True
    assert tensor_dtypes(bundle / "model.tflite") <= {"int8", "int32"}
    accuracy, _ = independent_accuracy(bundle / "model.tflite", digits / "images" / "val",
                                       labels_of(digits))
    assert manifest["metrics"]["int8_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert accuracy > 0.9


# --- the accuracy gate ------------------------------------------------------------------------


@pytest.mark.slow
def test_black_calibration_fails_the_gate_with_evidence_and_skips_recovery(
        digits: Path, calibration_sets: CalibrationSets, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = convert_digits(digits / "digits.keras", out, digits, "--profile", "rpi4",
                            "--calibration", calibration_sets.black, "--allow-poor-calibration",
                            "--validation", digits / "images" / "val")
    assert result.returncode == 3, result.stderr[-3000:]
    assert error_lines(result) == [
        "error: accuracy gate failed for rpi4 (bundle written, marked failed)"]
    bundle = out / "digits-rpi4"
    manifest = manifest_of(bundle)
    gate = manifest["gate"]
    assert gate["passed"] is False and gate["status"] == "fail" and gate["basis"] == "accuracy"
    # The evidence: the whole 95% interval of the paired drop is over the allowed drop.
    low, high = gate["ci95_points"]
    assert gate["max_drop_points"] < low <= gate["measured_points"] <= high
    assert gate["samples"] == manifest["metrics"]["samples"]
    drop = manifest["metrics"]["intervals"]["accuracy_drop_points"]
    assert drop["ci95"] == pytest.approx([low, high], abs=1e-3)
    # Keeping layers in float cannot fix an integer input calibrated on black frames.
    recovery = manifest["recovery"]
    assert recovery["attempted"] is False and recovery["skipped"] == "input"
    assert "no recovery: the int8 input itself is broken" in result.stdout
    assert "FAIL" in result.stdout and "calibrate on data like the real inputs" in result.stdout
    accuracy, _ = independent_accuracy(bundle / "model.tflite", digits / "images" / "val",
                                       labels_of(digits))
    assert manifest["metrics"]["int8_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert accuracy < 0.5
    assert "Accuracy gate FAILED" in (bundle / "report.html").read_text()
    verify = edge_convert("verify", bundle, "--data", digits / "images" / "val")
    assert verify.returncode == 3
