"""Magnitude pruning in Keras 3 (child process).

The smallest-magnitude weights of every convolution and dense kernel are masked to zero,
sparsity rising from 0 to the target along a cubic (polynomial) schedule over the first 60% of
the fine-tuning steps; the rest fine-tunes at the target. Masks live in the callback, never in
the model: what is saved is a plain model whose pruned weights are zeros (masks stripped).

tensorflow-model-optimization's pruning raises on Keras 3 models; this needs no second Keras.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..tfjob import JobError
from .training import (
    BATCH_SIZE,
    accuracy,
    epoch_bar,
    flat_layers,
    load_arrays,
    refresh_batchnorm,
    require_arrays,
    set_seed,
    steps_per_epoch,
)

KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")
SCHEDULE_SHARE = 0.6   # of the steps over which sparsity rises; the rest recovers accuracy
MASK_UPDATES = 8       # mask recomputations on the way up
LEARNING_RATE = 5e-4


def prunable(model: Any) -> list[tuple[str, Any]]:
    """(layer name, kernel variable) of every convolution and dense layer."""
    found = []
    for layer in flat_layers(model):
        for variable in getattr(layer, "trainable_weights", []):
            name = variable.path.rsplit("/", 1)[-1]
            if name in KERNELS and len(variable.shape) >= 2:
                found.append((layer.name, variable))
    return found


def polynomial(step: int, target: float, end: int, power: float = 3.0) -> float:
    if step >= end:
        return target
    return target * (1.0 - (1.0 - step / end) ** power)


def magnitude_mask(weights: np.ndarray, sparsity: float, block: int = 1) -> np.ndarray:
    """Zero the ``sparsity`` share of weights with the smallest magnitude, in blocks of
    ``block`` neighbours along the input-channel axis (scored by their mean magnitude)."""
    moved = np.moveaxis(weights, -2, -1) if weights.ndim >= 2 else weights
    channels = moved.shape[-1]
    block = max(1, min(block, channels))
    pad = (-channels) % block
    padded = np.pad(np.abs(moved), [(0, 0)] * (moved.ndim - 1) + [(0, pad)])
    scores = padded.reshape(*padded.shape[:-1], -1, block).mean(axis=-1)
    count = round(sparsity * scores.size)
    keep = np.ones(scores.size, dtype=weights.dtype)
    if count:
        keep[np.argsort(scores, axis=None, kind="stable")[:count]] = 0
    mask = np.repeat(keep.reshape(scores.shape), block, axis=-1)[..., :channels]
    return np.moveaxis(mask, -1, -2) if weights.ndim >= 2 else mask


def pruning_callback(variables: list[tuple[str, Any]], target: float, total_steps: int,
                     block: int) -> Any:
    import keras

    end = max(1, int(total_steps * SCHEDULE_SHARE))
    every = max(1, end // MASK_UPDATES)

    class MagnitudePruning(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.step = 0
            self.masks: list[np.ndarray | None] = [None] * len(variables)

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.step += 1
            if self.step % every == 0 or self.step == end:
                sparsity = polynomial(self.step, target, end)
                self.masks = [magnitude_mask(np.asarray(v.numpy()), sparsity, block)
                              for _, v in variables]
            self.apply()

        def apply(self) -> None:
            for (_, variable), mask in zip(variables, self.masks, strict=True):
                if mask is not None:
                    variable.assign(np.asarray(variable.numpy()) * mask)

        def finish(self) -> None:
            self.masks = [magnitude_mask(np.asarray(v.numpy()), target, block)
                          for _, v in variables]
            self.apply()

    return MagnitudePruning()


def sparsity_report(variables: list[tuple[str, Any]]) -> tuple[list[dict[str, Any]], float]:
    layers = []
    zeros = total = 0
    for name, variable in variables:
        weights = np.asarray(variable.numpy())
        layer_zeros = int(np.count_nonzero(weights == 0))
        layers.append({"layer": name, "weights": int(weights.size),
                       "sparsity": round(layer_zeros / max(1, weights.size), 4)})
        zeros += layer_zeros
        total += weights.size
    return layers, round(zeros / max(1, total), 4)


def job_prune(job: dict[str, Any]) -> dict[str, Any]:
    import keras

    from ..tflite import load_model

    set_seed()
    kind, model = load_model(Path(job["model"]))
    if kind != "keras":
        raise JobError("pruning needs a Keras model (.keras or .h5), not a SavedModel")
    x, y = require_arrays(job["train"], "training")
    evaluation = load_arrays(job.get("evaluation"))
    variables = prunable(model)
    if not variables:
        raise JobError("the model has no convolution or dense layer to prune")
    before = accuracy(model, evaluation)
    epochs = int(job["epochs"])
    steps = steps_per_epoch(len(x))
    pruning = pruning_callback(variables, float(job["sparsity"]), steps * epochs,
                               int(job.get("block", 1)))
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=bool(job["from_logits"])),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, shuffle=True, verbose=0,
              callbacks=[pruning, epoch_bar(keras.callbacks.Callback, "pruning, epoch", epochs,
                                            steps)])
    pruning.finish()
    # Pruned layers feed BatchNorm different statistics than it learned: re-estimate them
    # (frozen statistics left a BatchNorm CNN on photo patches at 81.5% against 96.3%).
    refresh_batchnorm(model, x)
    layers, achieved = sparsity_report(variables)
    after = accuracy(model, evaluation)
    model.save(job["out"])
    return {"layers": layers, "achieved": achieved, "target": job["sparsity"],
            "accuracy_before": before, "accuracy_after": after, "epochs": epochs}
