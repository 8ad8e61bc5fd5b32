"""Optimization end to end (SPEC §8): the real CLI on the real digits, each run once per module
and read by several tests. The figures are recomputed here: gzip sizes from the files, accuracy
with LiteRT and this suite's own preprocessing, sparsity from the int8 weights themselves.

Must-show properties checked here: 50% pruning gzips to at most 0.7 × the plain int8 model within
1 point of float accuracy; a half-width distilled student within 2 points of its teacher with at
most 0.35 × its parameters and no worse than the same student on labels alone; QAT gives a fully
integer model (from an ``.h5``); the sweep recommends a bundle that passes the gate.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from support.daemon import edge_convert
from test_convert_cli import (
    DIGITS_FLAGS,
    independent_accuracy,
    labels_of,
    manifest_of,
    tensor_dtypes,
)

from converters.evidence import EXIT_CODES

if TYPE_CHECKING:
    from conftest import DigitModels


def gzipped(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def data_flags(digits: Path) -> list[str | Path]:
    return ["--labels", digits / "labels.txt", *DIGITS_FLAGS]


def weight_sparsity(model: Path) -> float:
    """Share of zeros among the int8 weights of the convolution and dense layers."""
    interp = Interpreter(model_path=str(model))
    zeros = total = 0
    for detail in interp.get_tensor_details():
        if np.dtype(detail["dtype"]) != np.int8 or len(detail["shape"]) < 2:
            continue
        try:
            weights = interp.get_tensor(detail["index"])
        except ValueError:
            continue  # activations hold no data before an invoke
        if detail["name"].endswith(("MatMul", "convolution", "Conv2D")) or weights.ndim == 4:
            zeros += int(np.count_nonzero(weights == 0))
            total += weights.size
    return zeros / max(1, total)


@pytest.fixture(scope="module")
def student(digits: Path, tmp_path_factory: pytest.TempPathFactory,
            ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("student") / "student.keras"
    result = edge_convert("distill", digits / "digits.keras", "--student-width", "0.5",
                          "--train", digits / "images" / "train",
                          "--validation", digits / "images" / "val", *data_flags(digits),
                          "--epochs", "12", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.fixture(scope="module")
def sweep(digits: Path, student: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory,
          ) -> tuple[Path, dict[str, Any], subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("sweep")
    result = edge_convert("sweep", digits / "digits.keras", "--profile", "rpi4",
                          "--train", digits / "images" / "train",
                          "--validation", digits / "images" / "val", *data_flags(digits),
                          "--prune", "0.5", "--student", student[0], "--name", "digits",
                          "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "sweep.json").read_text()), result


def row(result: dict[str, Any], variant: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in result["variants"] if r["variant"] == variant)
    return found


# --- distillation -----------------------------------------------------------------------------


def test_half_width_student_is_small_close_to_its_teacher_and_owes_it_something(
        student: tuple[Path, subprocess.CompletedProcess[str]], digits: Path) -> None:
    path, result = student
    with zipfile.ZipFile(path) as archive:
        record = json.loads(archive.read("edge-distillation.json"))
    teacher, pupil = record["teacher"], record["student"]
    assert pupil["params"] <= 0.35 * teacher["params"]
    assert pupil["accuracy"] >= teacher["accuracy"] - 0.02
    assert pupil["accuracy"] >= record["label_only"]["accuracy"]
    assert pupil["start"] == "teacher"  # a --student-width copy starts from the teacher's filters
    assert teacher["sha256"] == hashlib.sha256((digits / "digits.keras").read_bytes()).hexdigest()
    assert (record["temperature"], record["alpha"], pupil["width"]) == (2.0, 0.5, 0.5)
    printed = result.stdout
    for figure in (f"{teacher['params']:,}", f"{pupil['params']:,}",
                   f"{record['label_only']['accuracy'] * 100:.1f}%"):
        assert figure in printed, printed


def test_the_student_bundle_says_where_it_came_from(sweep: tuple[Path, dict[str, Any], Any],
                                                    digits: Path) -> None:
    _, result, _ = sweep
    manifest = manifest_of(Path(row(result, "student")["bundle"]))
    origin = manifest["optimization"]["distilled_from"]
    assert origin["sha256"] == hashlib.sha256((digits / "digits.keras").read_bytes()).hexdigest()
    assert origin["temperature"] == 2.0 and origin["alpha"] == 0.5
    # measured against the teacher's float accuracy, like every variant of the sweep
    assert manifest["metrics"]["float_accuracy"] == row(result, "ptq")["float_accuracy"]


# --- pruning ----------------------------------------------------------------------------------


def test_half_pruned_model_gzips_to_at_most_0_7_of_plain_int8_within_a_point(
        sweep: tuple[Path, dict[str, Any], Any], digits: Path) -> None:
    _, result, _ = sweep
    plain = Path(row(result, "ptq")["bundle"]) / "model.tflite"
    pruned = Path(row(result, "prune50")["bundle"]) / "model.tflite"
    assert gzipped(pruned) <= 0.7 * gzipped(plain), (gzipped(pruned), gzipped(plain))
    assert weight_sparsity(pruned) >= 0.45 and weight_sparsity(plain) < 0.1
    accuracy, samples = independent_accuracy(pruned, digits / "images" / "val", labels_of(digits))
    float_accuracy = row(result, "ptq")["float_accuracy"]
    assert samples == 539
    assert accuracy >= float_accuracy - 0.01, (accuracy, float_accuracy)


def test_pruned_manifest_and_report_carry_what_pruning_did(
        sweep: tuple[Path, dict[str, Any], Any]) -> None:
    _, result, _ = sweep
    bundle = Path(row(result, "prune50")["bundle"])
    manifest = manifest_of(bundle)
    pruning = manifest["optimization"]["pruning"]
    assert pruning["target"] == 0.5 and abs(pruning["achieved"] - 0.5) < 0.01
    assert pruning["epochs"] >= 1 and manifest["optimization"]["qat"] is False
    assert manifest["metrics"]["gzip_bytes"] == gzipped(bundle / "model.tflite")
    report = json.loads((bundle / "report.json").read_text())
    layers = report["optimization"]["pruning"]["layers"]
    assert len(layers) == 4 and all(abs(layer["sparsity"] - 0.5) < 0.02 for layer in layers)
    plain = report["optimization"]["plain"]
    assert plain["gzip_bytes"] == row(result, "ptq")["gzip_bytes"]
    page = (bundle / "report.html").read_text()
    assert "Pruning" in page and "Against plain int8" in page and "XNNPACK" in page


# --- sweep ------------------------------------------------------------------------------------


def test_sweep_recommends_the_smallest_bundle_that_passes_the_gate(
        sweep: tuple[Path, dict[str, Any], subprocess.CompletedProcess[str]],
        digits: Path) -> None:
    _out, result, run = sweep
    assert [r["variant"] for r in result["variants"]] == \
        ["ptq", "prune50", "student", "student+prune50"]
    best = result["recommended"]
    bundle = Path(best["bundle"])
    assert manifest_of(bundle)["gate"]["passed"] is True
    accuracy, _ = independent_accuracy(bundle / "model.tflite", digits / "images" / "val",
                                       labels_of(digits))
    assert accuracy >= result["float_accuracy"] - result["max_accuracy_drop"] / 100
    passing = [r for r in result["variants"] if r["gate_passed"]]
    assert gzipped(bundle / "model.tflite") == min(
        gzipped(Path(r["bundle"]) / "model.tflite") for r in passing)
    assert f"recommended: {best['variant']}" in run.stdout
    for r in result["variants"]:
        assert Path(r["bundle"]).is_dir()  # every bundle is kept
        assert r["gzip_bytes"] == gzipped(Path(r["bundle"]) / "model.tflite")


def test_sweep_page_has_the_table_and_the_plot(
        sweep: tuple[Path, dict[str, Any], Any]) -> None:
    out, result, _ = sweep
    page = (out / "sweep.html").read_text()
    assert page.count("<tr") == len(result["variants"]) + 1
    assert "data:image/png;base64," in page and (out / "sweep.png").stat().st_size > 10_000
    fronts = [r for r in result["variants"] if r["pareto_size"]]
    smallest = min(result["variants"], key=lambda r: r["gzip_bytes"])
    most_accurate = max(result["variants"], key=lambda r: r["accuracy"])
    assert smallest in fronts and most_accurate in fronts


# --- quantization-aware training ---------------------------------------------------------------


def test_qat_from_an_h5_gives_a_fully_integer_edgetpu_model_within_a_point(
        digit_models: DigitModels, digits: Path, tmp_path: Path) -> None:
    result = edge_convert("convert", digit_models.h5, "--profile", "coral-usb",
                          "--calibration", digits / "images" / "train",
                          "--validation", digits / "images" / "val", *data_flags(digits),
                          "--train", digits / "images" / "train", "--qat", "--epochs", "1",
                          "--name", "digits", "--out", tmp_path)
    bundle = tmp_path / "digits-coral-usb"
    model = bundle / "model.tflite"
    assert tensor_dtypes(model) <= {"uint8", "int8", "int32"}
    manifest = manifest_of(bundle)
    # Within a point by the measured drop; the gate may still want more samples to be sure.
    status = manifest["gate"]["status"]
    assert status != "fail" and result.returncode == EXIT_CODES[status], result.stderr[-3000:]
    assert manifest["optimization"]["qat"] is True and manifest["metrics"]["fully_integer"]
    accuracy, _ = independent_accuracy(model, digits / "images" / "val", labels_of(digits))
    assert accuracy >= manifest["metrics"]["float_accuracy"] - 0.01
    assert "QAT, epoch 1/1" in result.stderr
