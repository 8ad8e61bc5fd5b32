from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from converters.edgetpu import (
    EDGETPU_OPS,
    ModelGraph,
    OpInfo,
    assess,
    compile_for_edgetpu,
    model_ops,
    preflight,
)
from converters.errors import ConvertError
from converters.profiles import load_profile

# Built in a child process: the converter is heavy, and this test process stays TensorFlow-free.
BUILD_MODELS = r"""
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

out = Path(sys.argv[1])
keras.utils.set_random_seed(0)


def model(batch, exp=False):
    inp = keras.Input((8, 8, 1), batch_size=batch)
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    if exp:
        x = keras.layers.Lambda(tf.exp)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))


def samples():
    rng = np.random.default_rng(0)
    for _ in range(8):
        yield [rng.random((1, 8, 8, 1), dtype=np.float32)]


def convert(m, io=tf.int8, quantize=True):
    converter = tf.lite.TFLiteConverter.from_keras_model(m)
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = io
        converter.inference_output_type = io
    return converter.convert()


(out / "int8.tflite").write_bytes(convert(model(1)))
(out / "int8_exp.tflite").write_bytes(convert(model(1, exp=True)))
(out / "uint8_io.tflite").write_bytes(convert(model(1), io=tf.uint8))
(out / "float.tflite").write_bytes(convert(model(1), quantize=False))
(out / "dynamic_batch.tflite").write_bytes(convert(model(None)))
"""

needs_tensorflow = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None, reason="building models needs tensorflow")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("edgetpu_models")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", BUILD_MODELS, str(out)], env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


# --- real models ---------------------------------------------------------------------------------


@pytest.mark.slow
@needs_tensorflow
def test_model_ops_lists_ops_in_order_with_dtypes(models: Path) -> None:
    ops = model_ops(models / "int8.tflite")
    assert [op.op_name for op in ops] == ["CONV_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX"]
    assert [op.index for op in ops] == [0, 1, 2, 3]
    conv = ops[0]
    assert conv.input_dtypes == ("int8", "int8", "int32")  # input, weights, bias
    assert conv.constant_inputs == (False, True, True)
    assert conv.output_dtypes == ("int8",)


@pytest.mark.slow
@needs_tensorflow
def test_int8_model_maps_entirely(models: Path) -> None:
    report = preflight(models / "int8.tflite")
    assert report.ok
    assert report.first_cpu_index is None
    assert report.unsupported == [] and report.non_int8 == []
    assert (report.tpu_ops, report.cpu_ops) == (4, 0)
    assert report.summary() == "4 ops; all map to the Edge TPU"


@pytest.mark.slow
@needs_tensorflow
def test_an_unsupported_op_sends_the_rest_to_the_cpu(models: Path) -> None:
    report = preflight(models / "int8_exp.tflite")
    assert not report.ok
    assert [op.op_name for op in report.unsupported] == ["EXP"]
    assert report.first_cpu_index == 1
    assert (report.tpu_ops, report.cpu_ops) == (1, 4)
    lines = report.summary().splitlines()
    assert lines[0] == ("5 ops; 1 maps to the Edge TPU; the graph falls back to the CPU "
                        "from op 1 EXP on: 4 ops")
    assert lines[1] == "op 1 EXP: not in the Edge TPU op list"


@pytest.mark.slow
@needs_tensorflow
def test_uint8_io_quantize_ops_map(models: Path) -> None:
    report = preflight(models / "uint8_io.tflite")
    names = [op.op_name for op in report.ops]
    assert names[0] == names[-1] == "QUANTIZE"
    assert "uint8" in report.ops[0].input_dtypes
    assert report.ok


@pytest.mark.slow
@needs_tensorflow
def test_a_float_model_runs_on_the_cpu_from_the_start(models: Path) -> None:
    report = preflight(models / "float.tflite")
    assert report.unsupported == []
    assert len(report.non_int8) == len(report.ops) == 4
    assert report.first_cpu_index == 0 and report.tpu_ops == 0
    assert "op 0 CONV_2D: works on float32 tensors" in report.summary()


@pytest.mark.slow
@needs_tensorflow
def test_dynamic_batch_is_flagged(models: Path) -> None:
    report = preflight(models / "dynamic_batch.tflite")
    assert report.first_cpu_index is None
    assert report.dynamic_shapes and not report.batch_one
    assert not report.ok
    assert "dynamic shapes" in report.summary()


@pytest.mark.slow
@needs_tensorflow
def test_a_narrower_op_list_moves_the_split(models: Path) -> None:
    report = preflight(models / "int8.tflite", allowed_ops=["conv_2d", "mean", "softmax"])
    assert [op.op_name for op in report.unsupported] == ["FULLY_CONNECTED"]
    assert report.first_cpu_index == 2 and report.cpu_ops == 2


@pytest.mark.slow
@needs_tensorflow
def test_the_coral_profile_op_list_gives_the_same_verdict(models: Path) -> None:
    allowed = load_profile("coral-usb").constraints.allowed_ops
    for name in ("int8.tflite", "int8_exp.tflite"):
        assert preflight(models / name, allowed).to_dict() == preflight(models / name).to_dict()


@pytest.mark.slow
@needs_tensorflow
def test_report_as_json(models: Path) -> None:
    data = json.loads(json.dumps(preflight(models / "int8_exp.tflite").to_dict()))
    assert data["ok"] is False
    assert data["first_cpu_index"] == 1
    assert data["unsupported"] == [
        {"index": 1, "op": "EXP", "inputs": ["int8"], "outputs": ["int8"]}]
    assert data["op_names"][:2] == ["CONV_2D", "EXP"]


def test_missing_model() -> None:
    with pytest.raises(ConvertError, match="model not found"):
        preflight(Path("/nonexistent/model.tflite"))


def test_a_file_that_is_not_a_model(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"definitely not a flatbuffer" * 10)
    with pytest.raises(ConvertError) as info:
        model_ops(junk)
    assert str(info.value).startswith(f"cannot read {junk} as a TFLite model")
    assert "\n" not in str(info.value)


# --- the split rules, on hand-made graphs --------------------------------------------------------


def op(index: int, name: str, ins: tuple[str, ...], outs: tuple[str, ...] = ("int8",),
       constant: tuple[bool, ...] = ()) -> OpInfo:
    return OpInfo(index, name, ins, outs, constant or (False,) * len(ins))


def test_int32_is_fine_for_constants_but_not_activations() -> None:
    graph = ModelGraph(
        ops=[
            op(0, "CONV_2D", ("int8", "int8", "int32"), constant=(False, True, True)),
            op(1, "ADD", ("int8", "int32"), ("int32",)),
            op(2, "RESHAPE", ("int32", "int32"), constant=(False, True)),
        ],
        dynamic_shapes=False, input_shapes=[[1, 8, 8, 1]],
    )
    report = assess(graph)
    assert [o.index for o in report.non_int8] == [1, 2]
    assert report.first_cpu_index == 1
    assert report.ops[1].off_type_dtypes() == ["int32"]


def test_first_problem_wins_whatever_its_kind() -> None:
    graph = ModelGraph(
        ops=[op(0, "CONV_2D", ("int8",)), op(1, "GATHER", ("int8",)),
             op(2, "DEQUANTIZE", ("int8",), ("float32",))],
        dynamic_shapes=False, input_shapes=[[1, 4]],
    )
    report = assess(graph)
    assert report.first_cpu_index == 1
    lines = report.summary().splitlines()
    assert lines[1:] == [
        "op 1 GATHER: not in the Edge TPU op list",
        "op 2 DEQUANTIZE: not in the Edge TPU op list; works on float32 tensors "
        "(the Edge TPU needs 8-bit integers)",
    ]


def test_a_long_list_of_problems_is_cut_short() -> None:
    graph = ModelGraph(ops=[op(i, "CONV_2D", ("float32",), ("float32",)) for i in range(25)],
                       dynamic_shapes=False, input_shapes=[[1, 4]])
    lines = assess(graph).summary().splitlines()
    assert lines[0].endswith("from op 0 CONV_2D on: 25 ops")
    assert len(lines) == 12
    assert lines[-1] == "... and 15 more ops like these"


def test_edgetpu_op_list_is_builtin_op_names() -> None:
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "QUANTIZE"} <= EDGETPU_OPS
    assert not {"EXP", "GATHER", "DIV", "DEQUANTIZE"} & EDGETPU_OPS
    assert all(name == name.upper() and " " not in name for name in EDGETPU_OPS)


# --- the compiler --------------------------------------------------------------------------------


def fake_compiler(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / "edgetpu_compiler"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_without_the_compiler_says_where_to_compile(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    result = compile_for_edgetpu(tmp_path / "model.tflite", tmp_path / "out")
    assert not result.ran and not result.ok and result.output is None
    assert "edgetpu_compiler is not installed here" in result.message
    assert "ready for it" in result.message and "model.tflite" in result.message


def test_runs_the_compiler_and_keeps_its_log(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # prints its arguments, writes <stem>_edgetpu.tflite into the -o directory
    fake_compiler(tmp_path / "bin", """\
echo "args: $*"
echo "Number of operations that will run on Edge TPU: 4"
echo "Number of operations that will run on CPU: 0"
name=$(basename "$4" .tflite)
cp "$4" "$3/${name}_edgetpu.tflite"
""")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    model = tmp_path / "model.tflite"
    model.write_bytes(b"model bytes")
    result = compile_for_edgetpu(model, tmp_path / "out")
    assert result.ran and result.ok
    assert result.output == tmp_path / "out" / "model_edgetpu.tflite"
    assert result.output.read_bytes() == b"model bytes"
    assert f"args: -s -o {tmp_path / 'out'} {model}" in result.log
    assert result.message == "compiled model_edgetpu.tflite (4 ops on the Edge TPU, 0 on the CPU)"


def test_a_failing_compile_reports_the_last_log_line(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fake_compiler(tmp_path / "bin", 'echo "Edge TPU Compiler version 16.0"\n'
                                    'echo "Invalid model: model.tflite" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    result = compile_for_edgetpu(tmp_path / "model.tflite", tmp_path / "out")
    assert result.ran and not result.ok and result.output is None
    assert result.message == "edgetpu_compiler failed: Invalid model: model.tflite"
    assert "version 16.0" in result.log
