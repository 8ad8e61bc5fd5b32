"""The bundle a conversion writes (SPEC §3) and the daemon's checks when it loads one.

A tiny CNN is converted by TensorFlow in a child process (float32 and full int8); everything else
runs through the real bundle writer and the real loader.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from pydantic import ValidationError

from converters import bundle_writer
from converters.bundle_writer import BundleParts, write_bundle
from converters.data import Dataset
from converters.profiles import load_profile
from converters.verify import compare, float_tensors, reference_stats, run_model
from edge_runtime.bundles.manifest import (
    BundleError,
    bare_model,
    load_bundle_dir,
    write_manifest,
)
from edge_runtime.preprocess import InputSpec

NAMES = ["circle", "square", "cross"]
BASE_SPEC = InputSpec(shape=(1, 8, 8, 1), color="GRAY", mean=(0.0,), std=(255.0,))

BUILD_MODELS = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf

out = sys.argv[1]
tf.keras.utils.set_random_seed(0)
model = tf.keras.Sequential([
    tf.keras.Input((8, 8, 1), batch_size=1),
    tf.keras.layers.Conv2D(4, 3, activation="relu"),
    tf.keras.layers.Flatten(),
    tf.keras.layers.Dense(3, activation="softmax"),
])
rng = np.random.default_rng(1)

def representative():
    for _ in range(32):
        yield [rng.random((1, 8, 8, 1), dtype=np.float32)]

conv = tf.lite.TFLiteConverter.from_keras_model(model)
open(f"{out}/float.tflite", "wb").write(conv.convert())
conv = tf.lite.TFLiteConverter.from_keras_model(model)
conv.optimizations = [tf.lite.Optimize.DEFAULT]
conv.representative_dataset = representative
conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
conv.inference_input_type = tf.int8
conv.inference_output_type = tf.int8
open(f"{out}/int8.tflite", "wb").write(conv.convert())
"""

SPEC_KEYS = {"schema", "name", "version", "created", "task", "model_file", "sha256", "profile",
             "input", "outputs", "metrics", "calibration", "versions", "reference_stats"}
METRIC_KEYS = {"float_accuracy", "int8_accuracy", "agreement", "samples", "size_bytes",
               "float_size_bytes", "host_latency_ms"}
INPUT_KEYS = {"shape", "dtype", "layout", "color", "resize", "mean", "std", "quantization"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", BUILD_MODELS, str(folder)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def shapes() -> Dataset:
    """Small drawings of the three classes, a little noisy."""
    rng = np.random.default_rng(7)
    items, labels = [], []
    for i in range(30):
        image = np.zeros((8, 8), np.uint8)
        kind = i % 3
        if kind == 0:
            image[2:6, 2:6] = 255
            image[2, 2] = image[2, 5] = image[5, 2] = image[5, 5] = 0
        elif kind == 1:
            image[1:7, 1:7] = 255
            image[2:6, 2:6] = 0
        else:
            np.fill_diagonal(image, 255)
            np.fill_diagonal(np.fliplr(image), 255)
        noise = rng.integers(0, 30, (8, 8), dtype=np.uint8)
        items.append(np.maximum(image, noise))
        labels.append(kind)
    return Dataset(items, np.asarray(labels), NAMES, "test shapes", "ab" * 32)


def make_parts(models: Path, data: Dataset, profile: str = "rpi4",
               version: str = "1") -> BundleParts:
    float_run = run_model(models / "float.tflite", data, BASE_SPEC, latency_runs=10)
    quant_run = run_model(models / "int8.tflite", data, BASE_SPEC, latency_runs=10)
    cmp = compare("classification", float_run.outputs, quant_run.outputs, data.labels)
    layers = [{"tensor_name": f"t{i}", "op_name": op, "tensor_idx": i, "scale": 0.02,
               "zero_point": 0, "rmse_over_scale": err, "mean_abs_error": 0.0,
               "max_abs_error": 0.1}
              for i, (op, err) in enumerate([("CONV_2D", 0.31), ("FULLY_CONNECTED", 0.82)])]
    return BundleParts(
        name="tiny", version=version, profile=load_profile(profile),
        model=models / "int8.tflite", spec=quant_run.input_spec, task="classification",
        class_names=NAMES, comparison=cmp, float_run=float_run, quant_run=quant_run,
        float_latency_ms=float_run.latency_ms, layers=layers, recovery=None,
        calibration={"samples": 30, "source": data.source, "sha256": data.sha256},
        versions={"tensorflow": "test", "keras": "test", "converter": "0", "runtime": "litert"},
        reference_stats=reference_stats("classification", quant_run.outputs, NAMES, False),
        postprocess={"softmax": False},
        gate={"max_accuracy_drop": 1.0, "accuracy_drop": round(cmp.drop_points, 3),
              "basis": cmp.basis, "passed": cmp.drop_points <= 1.0},
        float_tensors=float_tensors(models / "int8.tflite"), conversion_s=0.5,
        eval_basis="validation",
    )


@pytest.fixture(scope="module")
def bundle(models: Path, shapes: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles")
    path, _ = write_bundle(make_parts(models, shapes), out, log=lambda _: None)
    return path


def manifest_of(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    return data


def copy_bundle(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / bundle.name
    shutil.copytree(bundle, target)
    return target


def edit_manifest(bundle: Path, **changes: Any) -> None:
    data = manifest_of(bundle)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    (bundle / "manifest.json").write_text(json.dumps(data))


# --- what the writer produces -----------------------------------------------------------------


def test_bundle_holds_the_spec_files(bundle: Path) -> None:
    assert bundle.name == "tiny-rpi4"
    assert {p.name for p in bundle.iterdir()} == {
        "model.tflite", "labels.txt", "manifest.json", "report.json", "report.html"}
    assert (bundle / "labels.txt").read_text().splitlines() == NAMES


def test_manifest_has_every_spec_field(bundle: Path) -> None:
    manifest = manifest_of(bundle)
    assert set(manifest) >= SPEC_KEYS
    assert manifest["schema"] == "edge-bundle/1"
    assert manifest["task"] == "classification" and manifest["model_file"] == "model.tflite"
    assert set(manifest["input"]) >= INPUT_KEYS
    assert set(manifest["metrics"]) >= METRIC_KEYS
    assert set(manifest["metrics"]["host_latency_ms"]) == {"float", "int8"}
    assert set(manifest["calibration"]) >= {"samples", "source", "sha256"}
    assert set(manifest["versions"]) >= {"tensorflow", "keras", "converter", "runtime"}
    assert manifest["profile"]["name"] == "rpi4"
    assert manifest["profile"]["quantization"] == "int8"
    created = dt.datetime.fromisoformat(manifest["created"])
    assert created.tzinfo is not None
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 600


def test_manifest_describes_the_model_as_the_runtime_sees_it(bundle: Path) -> None:
    manifest = manifest_of(bundle)
    model = bundle / "model.tflite"
    assert manifest["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert manifest["metrics"]["size_bytes"] == model.stat().st_size
    interp = Interpreter(model_path=str(model))
    inp = interp.get_input_details()[0]
    scale, zero = inp["quantization"]
    assert manifest["input"]["shape"] == [int(v) for v in inp["shape"]]
    assert manifest["input"]["dtype"] == np.dtype(inp["dtype"]).name == "int8"
    assert manifest["input"]["quantization"] == {"scale": pytest.approx(scale),
                                                 "zero_point": zero}
    assert (manifest["input"]["color"], manifest["input"]["std"]) == ("GRAY", 255.0)
    outs = interp.get_output_details()
    assert [o["shape"] for o in manifest["outputs"]] == [[int(v) for v in o["shape"]]
                                                         for o in outs]
    assert manifest["outputs"][0]["quantization"]["scale"] == \
        pytest.approx(outs[0]["quantization"][0])
    assert manifest["metrics"]["fully_integer"] is True


def test_manifest_metrics_match_the_runs(models: Path, shapes: Dataset, bundle: Path) -> None:
    metrics = manifest_of(bundle)["metrics"]
    quant = run_model(models / "int8.tflite", shapes, BASE_SPEC, latency_runs=10)
    assert shapes.labels is not None
    expected = float(np.mean(quant.outputs.argmax(1) == shapes.labels))
    assert metrics["int8_accuracy"] == pytest.approx(expected, abs=1e-4)
    assert metrics["samples"] == len(shapes)
    assert metrics["float_size_bytes"] == (models / "float.tflite").stat().st_size


def test_the_daemon_loads_what_the_converter_wrote(bundle: Path) -> None:
    loaded = load_bundle_dir(bundle)
    manifest = manifest_of(bundle)
    assert loaded.labels == NAMES and loaded.task == "classification"
    assert loaded.sha256 == manifest["sha256"]
    assert loaded.input_spec is not None
    assert loaded.input_spec.to_manifest() == manifest["input"]


def test_report_json_agrees_with_the_manifest(bundle: Path) -> None:
    report = json.loads((bundle / "report.json").read_text())
    metrics = manifest_of(bundle)["metrics"]
    assert report["sizes"]["model_bytes"] == metrics["size_bytes"]
    assert report["sizes"]["ratio"] == pytest.approx(
        metrics["float_size_bytes"] / metrics["size_bytes"], abs=1e-3)
    assert report["accuracy"]["int8_accuracy"] == metrics["int8_accuracy"]
    assert [r["rmse_over_scale"] for r in report["worst_layers"]] == [0.82, 0.31]


def test_report_html_is_self_contained_with_readable_plots(bundle: Path) -> None:
    page = (bundle / "report.html").read_text()
    sources = re.findall(r'<img[^>]*\ssrc="([^"]+)"', page)
    assert len(sources) >= 3  # sizes/latency, score distribution, per-layer error
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script" not in page and "<link" not in page


# --- writing is atomic ------------------------------------------------------------------------


def test_a_failure_while_writing_leaves_nothing_behind(
        models: Path, shapes: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle_writer, "write_reports", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_bundle(make_parts(models, shapes), tmp_path, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rewrite_keeps_the_previous_bundle(
        models: Path, shapes: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = write_bundle(make_parts(models, shapes, version="1"), tmp_path,
                            log=lambda _: None)
    monkeypatch.setattr(bundle_writer, "build_manifest", lambda *_: {"schema": "broken"})
    with pytest.raises(ValidationError):
        write_bundle(make_parts(models, shapes, version="2"), tmp_path, log=lambda _: None)
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    assert load_bundle_dir(first).version == "1"


def test_a_rewrite_replaces_the_bundle_and_leaves_no_temporaries(
        models: Path, shapes: Dataset, tmp_path: Path) -> None:
    write_bundle(make_parts(models, shapes, version="1"), tmp_path, log=lambda _: None)
    path, manifest = write_bundle(make_parts(models, shapes, version="2"), tmp_path,
                                  log=lambda _: None)
    assert manifest["version"] == "2" and load_bundle_dir(path).version == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-rpi4"]


def test_edge_tpu_bundle_carries_a_preflight_and_says_where_to_compile(
        models: Path, shapes: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # no edgetpu_compiler anywhere
    lines: list[str] = []
    path, manifest = write_bundle(make_parts(models, shapes, profile="coral-usb"),
                                  tmp_path / "out", log=lines.append)
    edgetpu = manifest["edgetpu"]
    assert edgetpu["compiled"] is False and edgetpu["compiler_ran"] is False
    assert "edgetpu_compiler" in edgetpu["message"] and "installed" in edgetpu["message"]
    preflight = edgetpu["preflight"]
    assert preflight["ok"] is True and preflight["cpu_ops"] == 0
    assert set(preflight["op_names"]) >= {"CONV_2D", "FULLY_CONNECTED"}
    assert any("all map to the Edge TPU" in line for line in lines)
    assert "Edge TPU" in (path / "report.html").read_text()


# --- what the loader refuses ------------------------------------------------------------------


def test_a_modified_model_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = copy_bundle(bundle, tmp_path)
    data = bytearray((copy / "model.tflite").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sha256 of model\.tflite does not match"):
        load_bundle_dir(copy)


def test_labels_that_do_not_fit_the_outputs_are_refused(bundle: Path, tmp_path: Path) -> None:
    copy = copy_bundle(bundle, tmp_path)
    (copy / "labels.txt").write_text("circle\nsquare\n")
    with pytest.raises(BundleError, match=r"labels\.txt has 2 labels but the model has 3 classes"):
        load_bundle_dir(copy)


@pytest.mark.parametrize(("changes", "message"), [
    ({"schema": "edge-bundle/0"}, "unsupported manifest schema 'edge-bundle/0'"),
    ({"input": None}, "manifest field 'input'"),
    ({"task": "dancing"}, "manifest field 'task'"),
    ({"model_file": "../model.tflite"}, "must be a plain file name"),
    ({"model_file": "other.tflite"}, "model file other.tflite is missing"),
])
def test_bad_manifests_are_refused_with_the_field_named(
        bundle: Path, tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    copy = copy_bundle(bundle, tmp_path)
    edit_manifest(copy, **changes)
    with pytest.raises(BundleError, match=re.escape(message)):
        load_bundle_dir(copy)


def test_missing_or_broken_manifests_are_refused(bundle: Path, tmp_path: Path) -> None:
    copy = copy_bundle(bundle, tmp_path)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest is not valid JSON"):
        load_bundle_dir(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"no manifest\.json \(not a bundle\)"):
        load_bundle_dir(copy)
    with pytest.raises(BundleError, match="does not exist or is not a directory"):
        load_bundle_dir(tmp_path / "nowhere")


def test_write_manifest_refuses_an_incomplete_manifest(bundle: Path, tmp_path: Path) -> None:
    data = manifest_of(bundle)
    del data["sha256"]
    with pytest.raises(ValidationError):
        write_manifest(tmp_path, data)
    assert not (tmp_path / "manifest.json").exists()


def test_bare_models_are_described_by_their_flags(models: Path) -> None:
    model = models / "int8.tflite"
    described = bare_model(model, labels=NAMES)
    assert described.task == "classification" and described.manifest is None
    assert described.sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
    assert bare_model(model).task == "raw"
    with pytest.raises(BundleError, match="unknown task 'dancing'"):
        bare_model(model, task="dancing")
    with pytest.raises(BundleError, match="does not exist"):
        bare_model(models / "missing.tflite")
