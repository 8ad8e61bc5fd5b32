"""Fine-tuning in the child process: arrays in, a progress bar per epoch, accuracy out.

The arrays were preprocessed by the parent through ``edge_runtime.preprocess``, so the model
trains on exactly what the board will feed it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..tfjob import JobError, progress

BATCH_SIZE = 32
SEED = 0


def load_arrays(path: str | Path | None) -> tuple[np.ndarray, np.ndarray] | None:
    if path is None:
        return None
    with np.load(path) as data:
        return data["x"].astype(np.float32), data["y"].astype(np.int64)


def require_arrays(path: str | Path | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = load_arrays(path)
    if arrays is None:
        raise JobError(f"{what} data is missing")
    return arrays


def steps_per_epoch(samples: int) -> int:
    return max(1, -(-samples // BATCH_SIZE))


def epoch_bar(base: type, label: str, epochs: int, steps: int) -> Any:
    """A progress bar per epoch, closed with the epoch's loss and accuracy.

    ``base`` is the Callback class of the Keras in use (Keras 3, or tf-keras for QAT).
    """

    class EpochBar(base):  # type: ignore[misc, valid-type]
        epoch = 0

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if batch + 1 < steps:
                progress(f"{label} {self.epoch + 1}/{epochs}", batch + 1, steps)

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            loss = float(logs.get("loss", float("nan")))
            acc = logs.get("accuracy", logs.get("label_accuracy"))
            figures = f" loss {loss:.3f}" + (f" acc {float(acc):.1%}" if acc is not None else "")
            progress(f"{label} {epoch + 1}/{epochs}{figures}", steps, steps)

    return EpochBar()


def accuracy(model: Any, arrays: tuple[np.ndarray, np.ndarray] | None) -> float | None:
    """Top-1 accuracy of a Keras (3 or tf-keras) model on preprocessed arrays."""
    if arrays is None:
        return None
    x, y = arrays
    outputs = np.asarray(model.predict(x, batch_size=256, verbose=0))
    return round(float(np.mean(outputs.argmax(axis=1) == y)), 5)


def refresh_batchnorm(model: Any, x: np.ndarray, passes: int = 2) -> None:
    """Re-estimate BatchNormalization moving statistics after a short training run.

    With the default momentum (0.99) the moving statistics lag far behind weights trained for a
    few epochs: a CNN at 88% training accuracy measured 20-56% in inference mode. Running the
    training data through in training mode with a low momentum brings them up to date.
    """
    import keras

    layers = [layer for layer in flat_layers(model)
              if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.8
    try:
        for _ in range(passes):
            for start in range(0, len(x), 128):
                model(x[start:start + 128], training=True)
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer.momentum = momentum


def flat_layers(model: Any) -> list[Any]:
    """Every layer, nested models' layers included."""
    found: list[Any] = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        if hasattr(layer, "layers"):
            found.extend(flat_layers(layer))
    return found


def set_seed() -> None:
    import keras

    keras.utils.set_random_seed(SEED)
