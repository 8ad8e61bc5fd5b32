"""Acceptance scenarios, reproduced with material made here rather than the sample's own files.

- an H.264 clip (libx264, yuv420p, written with PyAV) as the camera, read losslessly and paced;
- ``.tflite`` files made straight with ``tf.lite.TFLiteConverter`` (not by ``edge-convert``) and
  described by flags: a plain float32 model and a classic full-integer model with uint8 I/O;
- a Keras model of another architecture (BatchNormalization, logits out) taking grayscale
  normalised to [-1, 1], converted by ``edge-convert`` and served by the daemon; and, on that
  model, the check that a layer the accuracy recovery names is really kept in float.

Everything goes through the real CLIs in subprocesses; TensorFlow runs only in child processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from support.daemon import Mosquitto, edge_convert, missing, run_cli, seqs, top_label
from support.models import independent_accuracy, tensor_dtypes
from test_daemon_cli import Run, run_to_end

from edge_runtime.preprocess import InputSpec, preprocess_batch

pytestmark = pytest.mark.slow

CLIP_SIZE = 64
CLIP_FPS = 25
PACED_FPS = 150.0
BN_EPOCHS = 10

# TensorFlow runs in children, as in the converter: the test process stays free of it.
THIRD_PARTY_TFLITE = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from pathlib import Path
import cv2
import numpy as np
import keras
import tensorflow as tf

source, root, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
labels = (root / "labels.txt").read_text().split()


def load(split):
    x, y = [], []
    for index, label in enumerate(labels):
        for path in sorted((root / "images" / split / label).glob("*.png")):
            gray = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY)
            x.append(cv2.resize(gray, (28, 28), interpolation=cv2.INTER_LINEAR))
            y.append(index)
    return (np.stack(x)[..., None] / 255.0).astype(np.float32), np.array(y)


x_train, _ = load("train")
x_val, y_val = load("val")
model = keras.models.load_model(source, compile=False)
predicted = np.argmax(model.predict(x_val, verbose=0), axis=1)

(out / "float32.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())

converter = tf.lite.TFLiteConverter.from_keras_model(model)
converter.optimizations = [tf.lite.Optimize.DEFAULT]
converter.representative_dataset = lambda: ([x_train[i:i + 1]] for i in range(0, len(x_train), 4))
converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
converter.inference_input_type = tf.uint8
converter.inference_output_type = tf.uint8
(out / "uint8.tflite").write_bytes(converter.convert())

(out / "keras.json").write_text(json.dumps({
    "accuracy": float(np.mean(predicted == y_val)), "samples": int(len(y_val))}))
"""

# A small CNN with BatchNormalization and a logits head, on gray 32x32 scaled to [-1, 1].
TRAIN_BN_CNN = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from pathlib import Path
import cv2
import numpy as np
import keras

root, out, epochs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
labels = (root / "labels.txt").read_text().split()
SIZE = 32


def load(split):
    x, y = [], []
    for index, label in enumerate(labels):
        for path in sorted((root / "images" / split / label).glob("*.png")):
            gray = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY)
            x.append(cv2.resize(gray, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR))
            y.append(index)
    return ((np.stack(x)[..., None] - 127.5) / 127.5).astype(np.float32), np.array(y)


keras.utils.set_random_seed(1)
x, y = load("train")
x_val, y_val = load("val")
layers = keras.layers
model = keras.Sequential([
    keras.Input(shape=(SIZE, SIZE, 1)),
    layers.Conv2D(12, 3, padding="same", use_bias=False),
    layers.BatchNormalization(),
    layers.ReLU(),
    layers.MaxPooling2D(),
    layers.Conv2D(24, 3, padding="same", use_bias=False),
    layers.BatchNormalization(),
    layers.ReLU(),
    layers.MaxPooling2D(),
    layers.Flatten(),
    layers.Dense(32),
    layers.BatchNormalization(),
    layers.ReLU(),
    layers.Dense(len(labels)),
], name="bn_cnn")
model.compile(optimizer="adam", metrics=["accuracy"],
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
predicted = np.argmax(model.predict(x_val, verbose=0), axis=1)
model.save(out / "bn_cnn.keras")
(out / "keras.json").write_text(json.dumps({
    "accuracy": float(np.mean(predicted == y_val)), "samples": int(len(y_val))}))
"""


def run_tf_child(script: str, *args: str | Path, timeout: float = 600) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def child_job(workdir: Path, name: str, job: dict[str, Any]) -> dict[str, Any]:
    """One job of the converter's own TensorFlow child, as ``edge-convert`` runs it."""
    path = workdir / f"{name}.job.json"
    path.write_text(json.dumps(job))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "converters.child", str(path)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(Path(f"{path}.result").read_text())
    assert "error" not in result, result
    return result


def labels_of(digits: Path) -> list[str]:
    return (digits / "labels.txt").read_text().split()


def manifest_of(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    return data


def val_frames(digits: Path, size: int) -> tuple[list[np.ndarray], list[int]]:
    """The validation digits in sorted class order, upscaled, with each one's class index."""
    frames: list[np.ndarray] = []
    truth: list[int] = []
    for index, label in enumerate(labels_of(digits)):
        for path in sorted((digits / "images" / "val" / label).glob("*.png")):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            assert image is not None, path
            frames.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR))
            truth.append(index)
    return frames, truth


def val_count(digits: Path) -> int:
    return len(list((digits / "images" / "val").rglob("*.png")))


def folder_accuracy(run: Run) -> float:
    """Top-1 accuracy of published results over class folders (the class is the ref's folder)."""
    correct = [top_label(r) == r["frame"]["ref"].split("/")[0] for r in run.results]
    return sum(correct) / len(correct)


def final_frames(run: Run) -> dict[str, Any]:
    assert run.metrics, "no metrics message"
    frames: dict[str, Any] = run.metrics[-1]["pipelines"]["default"]["frames"]
    return frames


def io_dtypes(model: Path) -> tuple[str, str]:
    interp = Interpreter(model_path=str(model))
    return (np.dtype(interp.get_input_details()[0]["dtype"]).name,
            np.dtype(interp.get_output_details()[0]["dtype"]).name)


# ----- 1. an H.264 clip as the camera ---------------------------------------------------------


@pytest.fixture(scope="module")
def h264_clip(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """An H.264 .mp4 (libx264, yuv420p) of the validation digits and each frame's class index."""
    av = pytest.importorskip("av")
    frames, truth = val_frames(digits, CLIP_SIZE)
    path = tmp_path_factory.mktemp("h264") / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS)
        stream.width = stream.height = CLIP_SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "23"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert (video.codec_context.name, video.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert video.frames == len(frames)
    return path, truth


@pytest.fixture(scope="module")
def clip_run(broker: Mosquitto, h264_clip: tuple[Path, list[int]], digits_bundle: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Run:
    clip, truth = h264_clip
    return run_to_end(broker, tmp_path_factory.mktemp("clip"), digits_bundle, clip,
                      expect=len(truth))


def clip_accuracy(results: list[dict[str, Any]], truth: list[int], labels: list[str]) -> float:
    correct = [top_label(r) == labels[truth[int(r["frame"]["ref"])]] for r in results]
    return sum(correct) / len(correct)


@pytest.mark.mosquitto
def test_every_h264_frame_gets_one_result_numbered_without_gaps(
        clip_run: Run, h264_clip: tuple[Path, list[int]]) -> None:
    count = len(h264_clip[1])
    numbers = seqs(clip_run.results)
    assert sorted(set(numbers)) == list(range(1, count + 1)), f"missing {missing(numbers, count)[:10]}"
    assert sorted({int(r["frame"]["ref"]) for r in clip_run.results}) == list(range(count))
    frames = final_frames(clip_run)
    assert (frames["captured"], frames["processed"], frames["dropped"]) == (count, count, 0)


@pytest.mark.mosquitto
def test_h264_accuracy_by_frame_index_is_the_bundles(
        clip_run: Run, h264_clip: tuple[Path, list[int]], digits: Path,
        digits_bundle: Path) -> None:
    expected = manifest_of(digits_bundle)["metrics"]["int8_accuracy"]
    accuracy = clip_accuracy(clip_run.results, h264_clip[1], labels_of(digits))
    # H.264 at crf 23 blurs the strokes a little; a mislabelled frame order would fall to ~10 %.
    assert accuracy == pytest.approx(expected, abs=0.03), (accuracy, expected)


@pytest.mark.mosquitto
def test_a_paced_h264_clip_behaves_like_a_camera(
        broker: Mosquitto, h264_clip: tuple[Path, list[int]], digits: Path, digits_bundle: Path,
        tmp_path: Path) -> None:
    clip, truth = h264_clip
    run = run_to_end(broker, tmp_path, digits_bundle, clip, "--fps", str(PACED_FPS))

    frames = final_frames(run)
    ordered = sorted(run.results, key=lambda r: r["seq"])
    assert frames["captured"] == len(truth), frames
    assert frames["processed"] == len(ordered) >= 50, frames
    assert frames["processed"] + frames["dropped"] == frames["captured"], frames
    assert seqs(ordered) == list(range(1, len(ordered) + 1))
    # The newest frame wins: results come in capture order, never a stale frame after a newer one.
    refs = [int(r["frame"]["ref"]) for r in ordered]
    assert refs == sorted(set(refs)) and refs[-1] < len(truth), refs[:20]
    # Pacing can only stretch the span, never shrink it: a lower bound cannot flake.
    span = ordered[-1]["frame"]["captured_at"] - ordered[0]["frame"]["captured_at"]
    least = 0.8 * (refs[-1] - refs[0]) / PACED_FPS
    assert span >= least, f"frames {refs[0]}-{refs[-1]} captured within {span:.3f} s"
    # Which frames were dropped depends on timing, not content: allow for the smaller sample.
    expected = manifest_of(digits_bundle)["metrics"]["int8_accuracy"]
    slack = max(0.03, 3 * (expected * (1 - expected) / len(ordered)) ** 0.5)
    accuracy = clip_accuracy(ordered, truth, labels_of(digits))
    assert accuracy == pytest.approx(expected, abs=slack), (accuracy, expected, len(ordered))


# ----- 2. third-party .tflite files described by flags ----------------------------------------


@pytest.fixture(scope="module")
def third_party(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """float32.tflite and uint8.tflite from TFLiteConverter itself, and keras.json (accuracy)."""
    out = tmp_path_factory.mktemp("third-party")
    run_tf_child(THIRD_PARTY_TFLITE, digits / "digits.keras", digits, out)
    return out


def keras_accuracy(folder: Path) -> float:
    return float(json.loads((folder / "keras.json").read_text())["accuracy"])


def bare_run(broker: Mosquitto, workdir: Path, model: Path, digits: Path) -> Run:
    count = val_count(digits)
    return run_to_end(broker, workdir, model, digits / "images" / "val",
                      "--labels", str(digits / "labels.txt"), "--task", "classification",
                      "--input-mean", "0", "--input-std", "255", "--color", "GRAY",
                      expect=count)


@pytest.fixture(scope="module")
def bare_runs(broker: Mosquitto, third_party: Path, digits: Path,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    work = tmp_path_factory.mktemp("bare")
    return {kind: bare_run(broker, work, third_party / f"{kind}.tflite", digits)
            for kind in ("float32", "uint8")}


def test_the_third_party_models_are_what_they_claim(third_party: Path) -> None:
    assert io_dtypes(third_party / "float32.tflite") == ("float32", "float32")
    assert "int8" not in tensor_dtypes(third_party / "float32.tflite")
    assert io_dtypes(third_party / "uint8.tflite") == ("uint8", "uint8")
    assert "float32" not in tensor_dtypes(third_party / "uint8.tflite")
    assert not (third_party / "manifest.json").exists()


@pytest.mark.mosquitto
@pytest.mark.parametrize(("kind", "tolerance"), [("float32", 0.005), ("uint8", 0.02)])
def test_a_third_party_tflite_is_as_accurate_as_its_keras_model(
        bare_runs: dict[str, Run], third_party: Path, digits: Path, kind: str,
        tolerance: float) -> None:
    run = bare_runs[kind]
    model = third_party / f"{kind}.tflite"
    labels = labels_of(digits)
    assert len({r["frame"]["ref"] for r in run.results}) == val_count(digits)
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    for r in run.results[:50]:
        assert r["task"] == "classification"
        assert r["model"] == {"name": kind, "version": "0", "sha256": sha}
        for p in r["predictions"]:
            assert labels[p["index"]] == p["label"] and 0.0 <= p["score"] <= 1.0
    accuracy, expected = folder_accuracy(run), keras_accuracy(third_party)
    assert expected > 0.9
    assert accuracy == pytest.approx(expected, abs=tolerance), (kind, accuracy, expected)
    frames = final_frames(run)
    assert frames["labelled"] == len(run.results)
    assert frames["correct"] == round(accuracy * len(run.results))


@pytest.mark.mosquitto
def test_the_uint8_model_agrees_with_the_float_model(bare_runs: dict[str, Run]) -> None:
    tops = {kind: {r["frame"]["ref"]: top_label(r) for r in run.results}
            for kind, run in bare_runs.items()}
    same = [tops["uint8"][ref] == label for ref, label in tops["float32"].items()]
    assert sum(same) / len(same) >= 0.98


@pytest.mark.parametrize("kind", ["float32", "uint8"])
def test_info_describes_a_third_party_tflite(third_party: Path, kind: str) -> None:
    model = third_party / f"{kind}.tflite"
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    text = run_cli("info", str(model))
    assert text.returncode == 0, text.stderr
    assert sha in text.stdout and "integrity    ok" in text.stdout
    assert f"[1, 28, 28, 1] {kind}" in text.stdout, text.stdout
    data = json.loads(run_cli("info", "--json", str(model)).stdout)
    assert data["sha256"] == sha and data["size_bytes"] == model.stat().st_size
    assert [i["dtype"] for i in data["inputs"]] == [kind]
    assert [o["shape"] for o in data["outputs"]] == [[1, 10]]
    assert "manifest" in data["note"]


@pytest.mark.parametrize("kind", ["float32", "uint8"])
def test_bench_runs_a_third_party_tflite(third_party: Path, kind: str) -> None:
    result = run_cli("bench", str(third_party / f"{kind}.tflite"), "--frames", "20", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["frames"] == 20 and data["model"]["name"] == kind
    for key in ("invoke_ms", "end_to_end_ms"):
        assert 0 < data[key]["p50"] <= data[key]["p95"] <= data[key]["p99"], data
    assert data["fps"] > 0


# ----- 3. a third-party Keras model on gray input in [-1, 1] ----------------------------------


@pytest.fixture(scope="module")
def bn_model(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bn_cnn.keras and keras.json (its float accuracy on the validation digits)."""
    out = tmp_path_factory.mktemp("bn-cnn")
    run_tf_child(TRAIN_BN_CNN, digits, out, str(BN_EPOCHS))
    return out


@pytest.fixture(scope="module")
def bn_convert(bn_model: Path, digits: Path, tmp_path_factory: pytest.TempPathFactory,
               ) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bn-bundles")
    result = edge_convert(
        "convert", bn_model / "bn_cnn.keras", "--profile", "rpi4",
        "--calibration", digits / "images" / "train", "--validation", digits / "images" / "val",
        "--labels", digits / "labels.txt", "--input-mean", "127.5", "--input-std", "127.5",
        "--color", "GRAY", "--out", out)
    return result, out / "bn_cnn-rpi4"


@pytest.fixture(scope="module")
def bn_bundle(bn_convert: tuple[subprocess.CompletedProcess[str], Path]) -> Path:
    result, bundle = bn_convert
    assert result.returncode == 0, result.stderr[-3000:]
    return bundle


def test_the_normalised_gray_model_converts_fully_integer(bn_bundle: Path) -> None:
    model = bn_bundle / "model.tflite"
    assert tensor_dtypes(model) <= {"int8", "int32"}
    assert io_dtypes(model) == ("int8", "int8")
    manifest = manifest_of(bn_bundle)
    assert manifest["metrics"]["fully_integer"] is True
    assert manifest["gate"]["passed"] is True
    assert manifest["input"]["shape"] == [1, 32, 32, 1]
    assert (manifest["input"]["mean"], manifest["input"]["std"], manifest["input"]["color"]) \
        == (127.5, 127.5, "GRAY")
    # The model ends in logits: the daemon is told to apply softmax.
    assert manifest["postprocess"] == {"softmax": True}


def test_the_normalised_gray_model_keeps_its_accuracy(bn_bundle: Path, bn_model: Path) -> None:
    metrics = manifest_of(bn_bundle)["metrics"]
    assert metrics["agreement"] >= 0.98, metrics
    assert 100 * (metrics["float_accuracy"] - metrics["int8_accuracy"]) <= 1.0, metrics
    # The float reference is the Keras model seen through the same preprocessing.
    assert metrics["float_accuracy"] == pytest.approx(keras_accuracy(bn_model), abs=0.004)
    assert keras_accuracy(bn_model) > 0.9


def test_the_normalised_gray_manifest_accuracy_is_true(bn_bundle: Path, digits: Path) -> None:
    metrics = manifest_of(bn_bundle)["metrics"]
    accuracy, count = independent_accuracy(bn_bundle / "model.tflite", digits / "images" / "val",
                                           labels_of(digits), mean=127.5, std=127.5)
    assert metrics["samples"] == count and metrics["evaluated_on"] == "validation"
    assert metrics["int8_accuracy"] == pytest.approx(accuracy, abs=1e-4)


@pytest.mark.mosquitto
def test_the_daemon_serves_the_normalised_gray_bundle_at_its_accuracy(
        broker: Mosquitto, bn_bundle: Path, digits: Path, tmp_path: Path) -> None:
    count = val_count(digits)
    run = run_to_end(broker, tmp_path, bn_bundle, digits / "images" / "val", expect=count)
    assert sorted(set(seqs(run.results))) == list(range(1, count + 1))
    for r in run.results:
        scores = [p["score"] for p in r["predictions"]]
        assert all(0.0 <= s <= 1.0 for s in scores) and sum(scores) <= 1.0 + 1e-3, r
    expected = manifest_of(bn_bundle)["metrics"]["int8_accuracy"]
    assert folder_accuracy(run) == pytest.approx(expected, abs=1e-4)


def test_a_layer_named_for_recovery_really_stays_in_float(bn_model: Path, digits: Path,
                                                          tmp_path: Path) -> None:
    """The accuracy recovery keeps the layers that the debug job's statistics name in float:
    the names must mean the same graph nodes in the recovery job's own process."""
    spec = InputSpec(shape=(1, 32, 32, 1), color="GRAY", mean=(127.5,), std=(127.5,))
    images = [cv2.imread(str(p)) for p in sorted((digits / "images" / "train").rglob("*.png"))]
    np.save(tmp_path / "calibration.npy", preprocess_batch(images[::10], spec))
    job = {"job": "quantize", "model": str(bn_model / "bn_cnn.keras"),
           "calibration": str(tmp_path / "calibration.npy"), "quantization": "int8",
           "io_dtype": "int8", "debug_samples": 16}
    debug = child_job(tmp_path, "debug", {**job, "out": str(tmp_path / "debug.tflite"),
                                          "debug": True})
    worst = max(debug["layers"], key=lambda layer: layer["rmse_over_scale"])["tensor_name"]
    kept = tmp_path / "kept.tflite"
    child_job(tmp_path, "kept", {**job, "out": str(kept), "denylist": [worst]})
    floats = {t["name"] for t in Interpreter(model_path=str(kept)).get_tensor_details()
              if np.dtype(t["dtype"]).name == "float32"}
    assert worst in floats, f"{worst} was quantized anyway; float tensors: {sorted(floats)}"
