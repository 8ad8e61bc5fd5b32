"""Quantization-aware training (child process), through tensorflow-model-optimization.

tfmot 0.8.1 raises on Keras 3 models and works on tf-keras ones, and a Keras 3 file does not load
in tf-keras. So the Keras 3 model is rebuilt layer by layer in tf-keras, from each layer's config
(initializers, regularizers and constraints left out: the weights are copied) and wired as the
original graph; the copy must give the same outputs before training starts. Layers without a
tf-keras counterpart, nested models and subclassed models are refused by name.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..tfjob import JobError, one_line
from .training import (
    BATCH_SIZE,
    accuracy,
    epoch_bar,
    load_arrays,
    require_arrays,
    set_seed,
    steps_per_epoch,
)

LEARNING_RATE = 1e-4
EMA_DECAY = 0.999  # tfmot's, for the activation ranges during fine-tuning
_ema = {"decay": EMA_DECAY}
DROPPED_KEYS = ("_initializer", "_regularizer", "_constraint")
TOLERANCE = 1e-3   # of the output range: rebuilt and original model must agree


def _tf_keras_layer(layer: Any) -> Any:
    import tf_keras

    kind = type(layer).__name__
    cls = getattr(tf_keras.layers, kind, None)
    if cls is None or hasattr(layer, "layers"):
        raise JobError(f"quantization-aware training cannot rebuild layer {layer.name!r} ({kind}) "
                       "in tf-keras; give a model made of standard Keras layers")
    allowed = set(inspect.signature(cls.__init__).parameters)
    config = {key: value for key, value in layer.get_config().items()
              if key in allowed and key != "dtype" and not key.endswith(DROPPED_KEYS)}
    if isinstance(config.get("activation"), dict):
        raise JobError(f"layer {layer.name!r} uses a custom activation; quantization-aware "
                       "training cannot rebuild it")
    try:
        return cls(**config)
    except Exception as exc:
        raise JobError(f"layer {layer.name!r} ({kind}) does not rebuild in tf-keras: "
                       f"{one_line(exc)}") from None


def to_tf_keras(model: Any) -> Any:
    """The same network as a tf-keras model with the same weights."""
    import keras
    import tf_keras

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise JobError("quantization-aware training supports models with one input and one output")
    shape = tuple(model.inputs[0].shape[1:])
    rebuilt: dict[str, Any] = {}
    if isinstance(model, keras.Sequential):
        inputs = tf_keras.Input(shape=shape)
        tensor = inputs
        for layer in model.layers:
            rebuilt[layer.name] = _tf_keras_layer(layer)
            tensor = rebuilt[layer.name](tensor)
        outputs = tensor
    else:
        try:
            config = model.get_config()
            nodes = config["layers"]
        except Exception:
            raise JobError("the model is a subclassed Keras model; quantization-aware training "
                           "needs a Sequential or functional model") from None
        inputs, outputs = _rebuild_graph(model, nodes, config, shape, rebuilt)
    copy = tf_keras.Model(inputs, outputs, name=model.name)
    for layer in model.layers:
        if layer.name in rebuilt and layer.weights:
            target = rebuilt[layer.name]
            weights = [np.asarray(w) for w in layer.get_weights()]
            if len(target.get_weights()) != len(weights):
                raise JobError(f"layer {layer.name!r} keeps its weights differently in tf-keras")
            target.set_weights(weights)
    return copy


def _rebuild_graph(model: Any, nodes: list[dict[str, Any]], config: dict[str, Any],
                   shape: tuple[int, ...], rebuilt: dict[str, Any]) -> tuple[Any, Any]:
    import tf_keras

    tensors: dict[tuple[str, int], Any] = {}
    calls: dict[str, int] = {}
    inputs = None
    for node in nodes:
        name = node["name"]
        layer = model.get_layer(name)
        if node["class_name"] == "InputLayer":
            inputs = tf_keras.Input(shape=shape, name=name)
            tensors[(name, 0)] = inputs
            continue
        rebuilt[name] = _tf_keras_layer(layer)
        for inbound in node["inbound_nodes"]:
            args = _resolve(inbound.get("args", []), tensors)
            value = args[0] if len(args) == 1 else args
            index = calls.get(name, 0)
            tensors[(name, index)] = rebuilt[name](value)
            calls[name] = index + 1
    output = config["output_layers"]
    output = output[0] if isinstance(output[0], list) else output
    if inputs is None:
        raise JobError("the functional model has no input layer")
    return inputs, tensors[(output[0], output[1])]


def _resolve(value: Any, tensors: dict[tuple[str, int], Any]) -> Any:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        name, node, _ = value["config"]["keras_history"]
        return tensors[(name, node)]
    if isinstance(value, (list, tuple)):
        return [_resolve(v, tensors) for v in value]
    return value


def quantize(model: Any, preserve_sparsity: bool) -> Any:
    import tensorflow_model_optimization as tfmot

    qk = tfmot.quantization.keras
    try:
        if preserve_sparsity:
            # Pruned weights stay zero through the fine-tuning.
            scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
            return qk.quantize_apply(qk.quantize_annotate_model(model), scheme)
        return qk.quantize_model(model)
    except Exception as exc:
        raise JobError(f"quantization-aware training cannot wrap this model: {one_line(exc)}"
                       ) from None


def _moving_average_from(state: dict[str, float]) -> None:
    """tfmot's moving-average range quantizer, with its EMA decay read from ``state`` at call
    time (tfmot fixes it at 0.999) so that a calibration pass can set the ranges exactly."""
    from tensorflow_model_optimization.python.core.quantization.keras import (
        quant_ops,
        quantizers,
    )

    def call(self: Any, inputs: Any, training: Any, weights: dict[str, Any], **kwargs: Any) -> Any:
        return quant_ops.MovingAvgQuantize(
            inputs, weights["min_var"], weights["max_var"], ema_decay=state["decay"],
            is_training=training, num_bits=self.num_bits, per_channel=self.per_axis,
            symmetric=self.symmetric, narrow_range=self.narrow_range)

    quantizers.MovingAverageQuantizer.__call__ = call


def calibrate_ranges(model: Any, x: np.ndarray, batches: int = 32) -> None:
    """Start every activation range at the data's, not at tfmot's [-6, 6].

    tfmot starts each range at [-6, 6] and moves it with an EMA of decay 0.999 per step: a
    fine-tuning of a few hundred steps leaves a ReLU's range near [-5, 6] (half the levels on
    values it never takes) and clips a larger one at about 6. The ranges are set here to the
    mean of the per-batch minimum and maximum, which the EMA then keeps following.
    """
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    count = min(batches, steps_per_epoch(len(x)))
    try:
        for k in range(count):
            _ema["decay"] = k / (k + 1)   # the k-th batch gets weight 1/(k+1): a running mean
            batch = x[order[k * BATCH_SIZE:(k + 1) * BATCH_SIZE]]
            model(batch, training=True)
    finally:
        _ema["decay"] = EMA_DECAY


def _check_same(original: Any, copy: Any, x: np.ndarray) -> None:
    sample = x[:16]
    a = np.asarray(original.predict(sample, verbose=0))
    b = np.asarray(copy.predict(sample, verbose=0))
    span = float(np.ptp(a)) or 1.0
    if float(np.max(np.abs(a - b))) > TOLERANCE * span:
        raise JobError("the model rebuilt in tf-keras does not give the original's outputs; "
                       "quantization-aware training cannot use it")


def convert_integer(model: Any, calibration: np.ndarray, io_dtype: str) -> bytes:
    import tensorflow as tf
    import tf_keras

    from ..tflite import convert, representative

    inputs = tf_keras.Input(batch_size=1, shape=model.input_shape[1:])
    wrapped = tf_keras.Model(inputs, model(inputs, training=False))
    converter = tf.lite.TFLiteConverter.from_keras_model(wrapped)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative(calibration, f"converting ({io_dtype})")
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io_dtype in ("int8", "uint8"):
        converter.inference_input_type = getattr(tf, io_dtype)
        converter.inference_output_type = getattr(tf, io_dtype)
    return convert(converter)


def job_qat(job: dict[str, Any]) -> dict[str, Any]:
    # tfmot picks its Keras when TensorFlow is first imported: tf-keras, before anything else.
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tf_keras

    from ..tflite import load_model

    set_seed()
    kind, original = load_model(Path(job["model"]))
    if kind != "keras":
        raise JobError("quantization-aware training needs a Keras model (.keras or .h5)")
    x, y = require_arrays(job["train"], "training")
    evaluation = load_arrays(job.get("evaluation"))
    copy = to_tf_keras(original)
    _check_same(original, copy, x)
    _moving_average_from(_ema)
    model = quantize(copy, bool(job.get("preserve_sparsity")))
    calibrate_ranges(model, x)
    epochs = int(job["epochs"])
    steps = steps_per_epoch(len(x))
    model.compile(optimizer=tf_keras.optimizers.Adam(LEARNING_RATE),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(
                      from_logits=bool(job["from_logits"])),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, shuffle=True, verbose=0,
              callbacks=[epoch_bar(tf_keras.callbacks.Callback, "QAT, epoch", epochs, steps)])
    calibration = np.load(job["calibration"])
    sizes = {}
    for io_dtype, out in job["outputs"].items():
        data = convert_integer(model, calibration, io_dtype)
        Path(out).write_bytes(data)
        sizes[io_dtype] = len(data)
    return {"epochs": epochs, "accuracy_before": accuracy(original, evaluation),
            "accuracy_after": accuracy(model, evaluation), "sizes": sizes,
            "preserve_sparsity": bool(job.get("preserve_sparsity"))}
