"""A narrower copy of a Keras 3 model: convolution filters and dense units × F (child process).

Built from the teacher's own config with fresh weights, so every layer the config describes
comes along; a layer whose config fixes a width (a Reshape to a channel count, a custom layer)
cannot follow and is named in the error. The layer(s) producing the outputs keep their width,
so the student answers with the teacher's output shape.
"""

from __future__ import annotations

import copy
from typing import Any

from ..tfjob import JobError, one_line

WIDTH_KEYS = {
    "Conv1D": "filters", "Conv2D": "filters", "Conv3D": "filters",
    "SeparableConv1D": "filters", "SeparableConv2D": "filters",
    "Conv1DTranspose": "filters", "Conv2DTranspose": "filters", "Dense": "units",
}
# Layers whose config holds no width: they follow whatever reaches them.
FOLLOWERS = {
    "InputLayer", "BatchNormalization", "LayerNormalization", "GroupNormalization",
    "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Dropout", "SpatialDropout1D",
    "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "MaxPooling1D", "MaxPooling2D",
    "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Flatten", "ZeroPadding1D", "ZeroPadding2D",
    "Cropping1D", "Cropping2D", "UpSampling1D", "UpSampling2D", "Add", "Subtract", "Multiply",
    "Average", "Maximum", "Minimum", "Concatenate", "DepthwiseConv1D", "DepthwiseConv2D",
    "Rescaling", "Resizing", "Identity", "CenterCrop",
}


def narrower(model: Any, width: float) -> Any:
    import keras

    try:
        config = copy.deepcopy(model.get_config())
    except Exception:
        raise JobError("the teacher is a subclassed Keras model; --student-width needs a "
                       "Sequential or functional model (or give --student FILE)") from None
    layers = config.get("layers")
    if not isinstance(layers, list):
        raise JobError("the teacher's config lists no layers; give --student FILE instead")
    keep = _output_layers(model, layers)
    for entry in layers:
        kind, name = entry["class_name"], entry["config"].get("name", "?")
        if kind in WIDTH_KEYS:
            if name not in keep:
                key = WIDTH_KEYS[kind]
                entry["config"][key] = max(1, round(entry["config"][key] * width))
        elif kind not in FOLLOWERS:
            raise JobError(f"--student-width cannot narrow layer {name!r} ({kind}): its config "
                           "may fix a width; give --student FILE instead")
        entry["config"].pop("build_config", None)
        entry.pop("build_config", None)
    config["name"] = f"{model.name}_w{width:g}".replace(".", "")
    cls = keras.Sequential if isinstance(model, keras.Sequential) else keras.Model
    try:
        student = cls.from_config(config)
    except Exception as exc:
        raise JobError(f"--student-width {width:g}: the narrower copy does not build "
                       f"({one_line(exc)}); give --student FILE instead") from None
    if list(student.outputs[0].shape[1:]) != list(model.outputs[0].shape[1:]):
        raise JobError("the narrower copy's output shape differs from the teacher's")
    return student


def _output_layers(model: Any, layers: list[dict[str, Any]]) -> set[str]:
    """Names of the width layers nearest each output, walking back through followers."""
    import keras

    by_name = {entry["config"].get("name"): entry for entry in layers}
    if isinstance(model, keras.Sequential):
        for entry in reversed(layers):
            if entry["class_name"] in WIDTH_KEYS:
                return {entry["config"]["name"]}
        return set()
    outputs = model.get_config().get("output_layers", [])
    outputs = outputs if outputs and isinstance(outputs[0], list) else [outputs]
    keep: set[str] = set()
    pending = [out[0] for out in outputs if out]
    while pending:
        entry = by_name.get(pending.pop())
        if entry is None:
            continue
        if entry["class_name"] in WIDTH_KEYS:
            keep.add(entry["config"]["name"])
            continue
        pending.extend(parents(entry))
    return keep


def parents(entry: dict[str, Any]) -> list[str]:
    names: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            names.append(value["config"]["keras_history"][0])
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(entry.get("inbound_nodes", []))
    return names
