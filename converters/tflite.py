"""TensorFlow's side of a conversion, for the child process and the optimization jobs it runs:
load a Keras model, make and configure a TFLiteConverter, feed it representative samples, run
it with one-line errors. Imported only inside the child (TensorFlow is imported lazily here)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from converters.tfjob import JobError
from converters.tfjob import one_line as _one_line
from converters.tfjob import progress as _progress

UNSUPPORTED_OPS = re.compile(r"^(?:TF Select|Custom) ops: (.+)$", re.MULTILINE)
WRAPPER = "edge_batch1"



def load_model(path: Path) -> tuple[str, Any]:
    """Keras 3 ``.keras``, legacy ``.h5`` or a SavedModel directory."""
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise JobError(f"{path} is a directory but not a SavedModel (no saved_model.pb)")
        return "savedmodel", path
    if not path.is_file():
        raise JobError(f"model {path} does not exist")
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise JobError(f"model {path}: expected a .keras or .h5 file or a SavedModel directory")
    import keras

    try:
        return "keras", keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for corrupt files
        raise JobError(f"cannot load model {path.name}: {_one_line(exc)}") from None


def make_converter(kind: str, model: Any) -> Any:
    import tensorflow as tf

    if kind == "savedmodel":
        return tf.lite.TFLiteConverter.from_saved_model(str(model))
    import keras

    # A batch-1 wrapper gives static shapes (the Edge TPU needs them; boards run batch 1).
    inputs = [keras.Input(batch_shape=(1, *i.shape[1:]), dtype=i.dtype) for i in model.inputs]
    outputs = model(inputs[0] if len(inputs) == 1 else inputs)
    # A fixed name keeps the graph's node names the same in every process and on every call:
    # the per-layer statistics name nodes that a later recovery job keeps in float.
    return tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, outputs, name=WRAPPER))


def configure(converter: Any, quantization: str, io_dtype: str,
              dataset: Callable[[], Iterator[list[Any]]] | None) -> None:
    import tensorflow as tf

    if quantization == "float32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_dtype in ("int8", "uint8"):
            converter.inference_input_type = getattr(tf, io_dtype)
            converter.inference_output_type = getattr(tf, io_dtype)


def representative(samples: Any, label: str) -> Callable[[], Iterator[list[Any]]]:
    def gen() -> Iterator[list[Any]]:
        total = len(samples)
        for i in range(total):
            yield [samples[i:i + 1]]
            _progress(label, i + 1, total)
    return gen


def convert(converter: Any) -> bytes:
    try:
        return bytes(converter.convert())
    except Exception as exc:
        raise JobError(f"the model cannot be converted: {_conversion_problem(exc)}") from None


def _conversion_problem(exc: BaseException) -> str:
    # The converter's message is pages of MLIR; its summary lines name the offending ops.
    names = [n.strip() for line in UNSUPPORTED_OPS.findall(str(exc)) for n in line.split(",")]
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        return _one_line(exc)
    shown = ", ".join(names[:8]) + (" …" if len(names) > 8 else "")
    return f"TensorFlow op(s) {shown} have no TFLite builtin kernel; replace the layer(s) using them"
