"""Interpreter backends on real .tflite models built by TensorFlow in a child process."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.backends import (
    Backend,
    BackendError,
    DelegateError,
    ModelFileError,
    load_backend,
    parse_delegate,
    runtime_candidates,
)
from edge_runtime.backends.delegates import GPU_LIBRARY, edgetpu_library
from edge_runtime.preprocess import InputSpec, Preprocessor

REPO = Path(__file__).resolve().parents[2]

# Two models: float32 with two heads, and a full-int8 one (int8 in, int8 out). References come
# from Keras and from TensorFlow's own TFLite interpreter on the same inputs.
BUILD_MODELS = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf

out = sys.argv[1]
tf.keras.utils.set_random_seed(0)
inp = tf.keras.Input((8, 8, 1))
x = tf.keras.layers.Conv2D(4, 3, activation="relu")(inp)
x = tf.keras.layers.Flatten()(x)
probs = tf.keras.layers.Dense(3, activation="softmax")(x)
values = tf.keras.layers.Dense(2)(x)
two_heads = tf.keras.Model(inp, [probs, values])
one_head = tf.keras.Model(inp, probs)
rng = np.random.default_rng(1)

def representative():
    for _ in range(64):
        yield [rng.random((1, 8, 8, 1), dtype=np.float32)]

def convert(model, int8):
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()

def tflite_outputs(content, inputs):
    it = tf.lite.Interpreter(model_content=content)
    it.allocate_tensors()
    results = []
    for item in inputs:
        it.set_tensor(it.get_input_details()[0]["index"], item)
        it.invoke()
        results.append([it.get_tensor(d["index"]) for d in it.get_output_details()])
    return [np.stack([r[k] for r in results]) for k in range(len(results[0]))]

float_model, int8_model = convert(two_heads, False), convert(one_head, True)
open(f"{out}/float.tflite", "wb").write(float_model)
open(f"{out}/int8.tflite", "wb").write(int8_model)
xs = rng.random((5, 1, 8, 8, 1), dtype=np.float32)
it = tf.lite.Interpreter(model_content=int8_model)
scale, zero = it.get_input_details()[0]["quantization"]
xq = np.clip(np.round(xs / scale) + zero, -128, 127).astype(np.int8)
float_ref = tflite_outputs(float_model, xs)
np.savez(
    f"{out}/ref.npz", x=xs, xq=xq,
    keras_probs=np.stack([one_head(x).numpy() for x in xs]),
    keras_values=np.stack([two_heads(x)[1].numpy() for x in xs]),
    float_out0=float_ref[0], float_out1=float_ref[1],
    int8_out=tflite_outputs(int8_model, xq)[0],
)

# A model with an Edge TPU custom op, as edgetpu_compiler would leave it.
@tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
def special(x):
    return tf.math.special.bessel_i1e(x) + 1.0

conv = tf.lite.TFLiteConverter.from_concrete_functions([special.get_concrete_function()], special)
conv.allow_custom_ops = True
import flatbuffers
from ai_edge_litert import schema_py_generated as schema
content = conv.convert()
model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))
for code in model.operatorCodes:
    if code.customCode:
        code.customCode = b"edgetpu-custom-op"
builder = flatbuffers.Builder(1024)
builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
open(f"{out}/edgetpu.tflite", "wb").write(builder.Output())
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", BUILD_MODELS, str(folder)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def ref(models: Path) -> dict[str, np.ndarray]:
    with np.load(models / "ref.npz") as data:
        return {k: data[k] for k in data.files}


def run_all(backend: Backend, xs: np.ndarray) -> list[np.ndarray]:
    results = []
    for x in xs:
        backend.fill_input(partial(np.copyto, src=x))
        backend.invoke()
        results.append(backend.get_outputs())
    return [np.stack([r[k] for r in results]) for k in range(len(results[0]))]


def match_heads(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    probs = next(o for o in outputs if o.shape[-1] == 3)
    values = next(o for o in outputs if o.shape[-1] == 2)
    return probs, values


def edgetpu_installed() -> bool:
    try:
        ctypes.CDLL(edgetpu_library())
    except OSError:
        return False
    return True


# --- loading and running -------------------------------------------------------------------


def test_float_model_matches_keras_and_tflite(models: Path, ref: dict[str, np.ndarray]) -> None:
    with load_backend(models / "float.tflite") as backend:
        assert backend.runtime.startswith("ai_edge_litert ")
        assert backend.delegate == "xnnpack" and not backend.fell_back
        assert [t.dtype for t in backend.inputs] == ["float32"]
        assert backend.inputs[0].shape == (1, 8, 8, 1) and not backend.inputs[0].quantized
        outputs = run_all(backend, ref["x"])
    np.testing.assert_allclose(outputs[0], ref["float_out0"], atol=1e-5)
    np.testing.assert_allclose(outputs[1], ref["float_out1"], atol=1e-5)
    probs, values = match_heads(outputs)
    np.testing.assert_allclose(probs, ref["keras_probs"], atol=1e-4)
    np.testing.assert_allclose(values, ref["keras_values"], atol=1e-4)


def test_int8_model_matches_tflite_reference(models: Path, ref: dict[str, np.ndarray]) -> None:
    backend = load_backend(models / "int8.tflite", threads=1)
    info_in, info_out = backend.inputs[0], backend.outputs[0]
    assert (info_in.dtype, info_out.dtype) == ("int8", "int8")
    assert info_in.quantized and info_out.scale > 0
    (out,) = run_all(backend, ref["xq"])
    assert out.dtype == np.int8
    assert np.abs(out.astype(int) - ref["int8_out"].astype(int)).max() <= 1
    dequantized = (out.astype(np.float32) - info_out.zero_point) * info_out.scale
    np.testing.assert_allclose(dequantized, ref["keras_probs"], atol=0.05)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_give_same_results(models: Path, ref: dict[str, np.ndarray],
                                   threads: int) -> None:
    backend = load_backend(models / "float.tflite", threads=threads)
    assert backend.threads == threads
    np.testing.assert_allclose(run_all(backend, ref["x"])[0], ref["float_out0"], atol=1e-5)


@pytest.mark.parametrize("threads", [0, -2, 1.5, True])
def test_bad_thread_count_is_refused(models: Path, threads: Any) -> None:
    with pytest.raises(BackendError, match="threads must be a positive integer"):
        load_backend(models / "float.tflite", threads=threads)


def test_default_threads_use_available_cores(models: Path) -> None:
    backend = load_backend(models / "float.tflite")
    assert 1 <= backend.threads <= max(1, min(4, os.cpu_count() or 1))


def test_plain_cpu_kernels_give_same_results(models: Path, ref: dict[str, np.ndarray]) -> None:
    backend = load_backend(models / "int8.tflite", delegate="none")
    assert backend.delegate == "none"
    (out,) = run_all(backend, ref["xq"])
    assert np.abs(out.astype(int) - ref["int8_out"].astype(int)).max() <= 1


def test_model_from_bytes(models: Path, ref: dict[str, np.ndarray]) -> None:
    backend = load_backend((models / "float.tflite").read_bytes())
    np.testing.assert_allclose(run_all(backend, ref["x"])[0], ref["float_out0"], atol=1e-5)


def test_ops_lists_model_operators_in_order(models: Path) -> None:
    ops = load_backend(models / "float.tflite").ops()
    assert "DELEGATE" not in ops
    wanted = ["CONV_2D", "FULLY_CONNECTED", "SOFTMAX"]
    positions = [ops.index(name) for name in wanted]
    assert positions == sorted(positions)


def test_tensor_info_to_manifest(models: Path) -> None:
    info = load_backend(models / "int8.tflite").outputs[0]
    manifest = info.to_manifest()
    assert manifest["shape"] == [1, 3] and manifest["dtype"] == "int8"
    assert manifest["quantization"] == {"scale": info.scale, "zero_point": info.zero_point}
    json.dumps(manifest)


# --- fill_input: zero-copy, and never leaves a view behind ---------------------------------


def test_fill_input_hands_out_the_interpreter_buffer(models: Path) -> None:
    backend = load_backend(models / "float.tflite")
    seen: list[tuple[int, bool, tuple[int, ...]]] = []
    for _ in range(2):
        backend.fill_input(lambda buf: seen.append((buf.ctypes.data, buf.flags.writeable,
                                                    buf.shape)))
    assert seen[0] == seen[1]
    assert seen[0][1] and seen[0][2] == (1, 8, 8, 1)


def test_fill_input_with_the_preprocessor(models: Path) -> None:
    backend = load_backend(models / "int8.tflite")
    info = backend.inputs[0]
    spec = InputSpec(shape=info.shape, dtype=info.dtype, color="GRAY", std=(255.0,),
                     scale=info.scale, zero_point=info.zero_point)
    pre = Preprocessor(spec)
    frame = np.random.default_rng(3).integers(0, 256, (16, 16), dtype=np.uint8)
    backend.fill_input(lambda buf: pre(frame, out=buf))  # returns buf: must not be kept
    backend.invoke()
    zero_copy = backend.get_outputs()[0]
    backend.set_input(pre(frame))
    backend.invoke()
    np.testing.assert_array_equal(zero_copy, backend.get_outputs()[0])


def test_kept_view_is_reported_then_recovers(models: Path) -> None:
    backend = load_backend(models / "float.tflite")
    kept: list[np.ndarray] = []
    backend.fill_input(kept.append)
    with pytest.raises(BackendError, match="still referenced") as info:
        backend.invoke()
    assert "\n" not in str(info.value)
    kept.clear()
    backend.invoke()


def test_failing_fill_leaves_no_view_behind(models: Path) -> None:
    backend = load_backend(models / "float.tflite")

    def bad_frame(buf: np.ndarray) -> None:
        buf[...] = 0.5
        raise ValueError("frame is not an image")

    with pytest.raises(ValueError, match="not an image") as info:
        backend.fill_input(bad_frame)
    kept = info.value  # a caller may hold on to the error, traceback and all
    backend.invoke()
    assert kept.__traceback__ is not None


def test_outputs_are_copies(models: Path, ref: dict[str, np.ndarray]) -> None:
    backend = load_backend(models / "float.tflite")
    backend.set_input(ref["x"][0])
    backend.invoke()
    first = backend.get_outputs()
    backend.set_input(ref["x"][1])
    backend.invoke()  # would raise if ``first`` were views into the interpreter
    np.testing.assert_allclose(first[0], ref["float_out0"][0], atol=1e-5)


# --- set_input validation --------------------------------------------------------------------


def test_set_input_accepts_same_size_and_float64(models: Path,
                                                 ref: dict[str, np.ndarray]) -> None:
    backend = load_backend(models / "float.tflite")
    backend.set_input(ref["x"][2].reshape(8, 8, 1).astype(np.float64))
    backend.invoke()
    np.testing.assert_allclose(backend.get_outputs()[0], ref["float_out0"][2], atol=1e-5)


def test_set_input_rejects_wrong_dtype_and_shape(models: Path) -> None:
    backend = load_backend(models / "int8.tflite")
    with pytest.raises(ValueError, match="input 0 takes int8, got float32"):
        backend.set_input(np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"takes shape \[1, 8, 8, 1\], got \[1, 8, 8, 3\]"):
        backend.set_input(np.zeros((1, 8, 8, 3), np.int8))
    with pytest.raises(ValueError, match="no input 1"):
        backend.set_input(np.zeros((1, 8, 8, 1), np.int8), index=1)
    with pytest.raises(ValueError, match="no input 2"):
        backend.fill_input(lambda buf: None, index=2)


def test_closed_backend_refuses_work(models: Path) -> None:
    backend = load_backend(models / "float.tflite")
    backend.close()
    for call in (backend.invoke, backend.get_outputs, backend.ops,
                 lambda: backend.fill_input(lambda buf: None)):
        with pytest.raises(BackendError, match="closed"):
            call()


# --- bad models ------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "file is empty"),
    (b"this is not a model at all", "not a TFLite flatbuffer"),
])
def test_bad_model_file_is_one_line(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "x.tflite"
    path.write_bytes(content)
    with pytest.raises(ModelFileError) as info:
        load_backend(path)
    assert str(info.value) == f"cannot load model {path}: {reason}"


def test_truncated_model(tmp_path: Path, models: Path) -> None:
    path = tmp_path / "cut.tflite"
    path.write_bytes((models / "float.tflite").read_bytes()[:400])
    with pytest.raises(ModelFileError, match=r"cut\.tflite: not a TFLite flatbuffer") as info:
        load_backend(path)
    assert "\n" not in str(info.value)


def test_missing_model_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"missing\.tflite: file not found"):
        load_backend(tmp_path / "missing.tflite")
    with pytest.raises(ModelFileError, match="is a directory"):
        load_backend(tmp_path)
    with pytest.raises(ModelFileError, match="<bytes>: model is empty"):
        load_backend(b"")


# --- delegates -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kind", "label", "library", "options"), [
    (None, "xnnpack", "xnnpack", None, {}),
    ("XNNPACK", "xnnpack", "xnnpack", None, {}),
    ("none", "none", "none", None, {}),
    ("edgetpu", "edgetpu", "edgetpu", edgetpu_library(), {}),
    ("edgetpu:usb", "edgetpu", "edgetpu:usb", edgetpu_library(), {"device": "usb"}),
    ("edgetpu:pci", "edgetpu", "edgetpu:pci", edgetpu_library(), {"device": "pci"}),
    ("edgetpu:usb:0", "edgetpu", "edgetpu:usb:0", edgetpu_library(), {"device": "usb:0"}),
    ("edgetpu:1", "edgetpu", "edgetpu:1", edgetpu_library(), {"device": ":1"}),
    ("gpu", "gpu", "gpu", GPU_LIBRARY, {}),
    ("/opt/x/libdelegate.so", "external", "/opt/x/libdelegate.so", "/opt/x/libdelegate.so", {}),
    ("libvx_delegate.so.2", "external", "libvx_delegate.so.2", "libvx_delegate.so.2", {}),
])
def test_parse_delegate(name: str | None, kind: str, label: str, library: str | None,
                        options: dict[str, str]) -> None:
    spec = parse_delegate(name)
    assert (spec.kind, spec.label, spec.library, spec.options) == (kind, label, library, options)


def test_delegate_options_are_merged() -> None:
    spec = parse_delegate("edgetpu:usb", {"device": "usb:1", "performance": "max"})
    assert spec.options == {"device": "usb:1", "performance": "max"}


@pytest.mark.parametrize("name", ["tpu", "edgetpu:wifi", "coral"])
def test_unknown_delegate_names(name: str) -> None:
    with pytest.raises(BackendError, match="delegate"):
        parse_delegate(name)


def test_unknown_delegate_path(models: Path) -> None:
    path = f"/nonexistent/{uuid.uuid4().hex}/libdelegate.so"
    with pytest.raises(DelegateError) as info:
        load_backend(models / "float.tflite", delegate=path)
    assert str(info.value).startswith(f"{path} delegate unavailable: ")
    assert "\n" not in str(info.value)


def test_library_that_is_not_a_delegate(models: Path) -> None:
    with pytest.raises(DelegateError, match="is not a TFLite delegate library"):
        load_backend(models / "float.tflite", delegate="libm.so.6")


@pytest.mark.skipif(edgetpu_installed(), reason="libedgetpu is installed here")
def test_edgetpu_without_runtime(models: Path) -> None:
    with pytest.raises(DelegateError) as info:
        load_backend(models / "int8.tflite", delegate="edgetpu")
    assert str(info.value).startswith("edgetpu delegate unavailable: ")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(edgetpu_installed(), reason="libedgetpu is installed here")
def test_edgetpu_falls_back_to_cpu(models: Path, ref: dict[str, np.ndarray]) -> None:
    backend = load_backend(models / "int8.tflite", delegate="edgetpu:usb",
                           allow_cpu_fallback=True)
    assert backend.fell_back and backend.delegate == "xnnpack"
    assert backend.requested_delegate == "edgetpu:usb"
    assert backend.fallback_reason and "edgetpu:usb delegate unavailable" in backend.fallback_reason
    (out,) = run_all(backend, ref["xq"])
    assert np.abs(out.astype(int) - ref["int8_out"].astype(int)).max() <= 1


def test_fallback_warns_once(models: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = f"/nonexistent/{uuid.uuid4().hex}/libdelegate.so"
    with caplog.at_level(logging.WARNING, logger="edge_runtime.backends"):
        for _ in range(3):
            load_backend(models / "float.tflite", delegate=path, allow_cpu_fallback=True)
    warnings = [r for r in caplog.records if path in r.getMessage()]
    assert len(warnings) == 1
    assert "running on the CPU" in warnings[0].getMessage()


def test_edgetpu_compiled_model_on_the_cpu(models: Path) -> None:
    with pytest.raises(ModelFileError, match="compiled for the Edge TPU") as info:
        load_backend(models / "edgetpu.tflite")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(edgetpu_installed(), reason="libedgetpu is installed here")
def test_edgetpu_compiled_model_says_why_the_fallback_failed(models: Path) -> None:
    with pytest.raises(ModelFileError) as info:
        load_backend(models / "edgetpu.tflite", delegate="edgetpu", allow_cpu_fallback=True)
    message = str(info.value)
    assert "compiled for the Edge TPU" in message
    assert "edgetpu delegate unavailable" in message and "\n" not in message


def test_fallback_does_not_hide_a_bad_model(tmp_path: Path) -> None:
    path = tmp_path / "bad.tflite"
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(ModelFileError):
        load_backend(path, delegate="edgetpu", allow_cpu_fallback=True)


# --- runtime selection -----------------------------------------------------------------------


def test_runtime_order_prefers_litert_and_skips_tensorflow() -> None:
    found = runtime_candidates()
    assert found[0] == "ai_edge_litert"
    assert "tensorflow.lite" not in found


def test_tensorflow_is_a_candidate_only_without_the_others(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    assert runtime_candidates() == ["tensorflow.lite"]


def test_unknown_or_no_runtime(models: Path) -> None:
    with pytest.raises(BackendError, match="unknown runtime 'onnx'"):
        load_backend(models / "float.tflite", runtimes=["onnx"])
    with pytest.raises(BackendError, match="no usable TFLite runtime"):
        load_backend(models / "float.tflite", runtimes=[])


def run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                          capture_output=True, text=True, timeout=180, cwd=REPO)


def test_running_a_model_never_imports_tensorflow(models: Path) -> None:
    done = run_child("""
        import json, sys
        from edge_runtime.backends import load_backend
        from edge_runtime.metrics import MetricsRegistry
        backend = load_backend(sys.argv[1], delegate="edgetpu", allow_cpu_fallback=True)
        backend.fill_input(lambda buf: buf.fill(0))
        backend.invoke()
        outputs = backend.get_outputs()
        backend.ops()
        backend.close()
        MetricsRegistry().snapshot()
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        print(json.dumps({"runtime": backend.runtime, "heavy": heavy, "n": len(outputs)}))
    """, str(models / "int8.tflite"))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["runtime"].startswith("ai_edge_litert") and report["n"] == 1


def test_tensorflow_lite_fallback_when_litert_is_absent(models: Path) -> None:
    done = run_child("""
        import json, sys
        sys.modules["ai_edge_litert"] = None
        sys.modules["tflite_runtime"] = None
        import numpy as np
        from edge_runtime.backends import load_backend, runtime_candidates
        x = np.load(sys.argv[2])["x"][0]
        backend = load_backend(sys.argv[1])
        backend.fill_input(lambda buf: np.copyto(buf, x))
        backend.invoke()
        print(json.dumps({"candidates": runtime_candidates(), "runtime": backend.runtime,
                          "out": backend.get_outputs()[0].tolist()}))
    """, str(models / "float.tflite"), str(models / "ref.npz"))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["candidates"] == ["tensorflow.lite"]
    assert report["runtime"].startswith("tensorflow.lite ")
    with np.load(models / "ref.npz") as ref:
        np.testing.assert_allclose(report["out"], ref["float_out0"][0], atol=1e-5)
