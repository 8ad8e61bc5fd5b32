"""Checks on converted models written out here, independent of ``edge_runtime``: what a test
compares the product against."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter


def independent_accuracy(model: Path, images: Path, labels: list[str], mean: float = 0.0,
                         std: float = 255.0) -> tuple[float, int]:
    """Top-1 accuracy of a quantized gray ``model`` on class folders, with preprocessing written
    out here rather than taken from ``edge_runtime``."""
    interp = Interpreter(model_path=str(model))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    _, height, width, _ = (int(v) for v in inp["shape"])
    scale, zero = inp["quantization"]
    limits = np.iinfo(inp["dtype"])
    correct = total = 0
    for index, label in enumerate(labels):
        for path in sorted((images / label).glob("*.png")):
            gray = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY)
            small = cv2.resize(gray, (width, height), interpolation=cv2.INTER_LINEAR)
            real = (small.astype(np.float64) - mean) / std
            quantized = np.clip(np.round(real / scale) + zero, limits.min, limits.max)
            interp.set_tensor(inp["index"], quantized.astype(inp["dtype"]).reshape(inp["shape"]))
            interp.invoke()
            correct += int(np.argmax(interp.get_tensor(out["index"])) == index)
            total += 1
    return correct / total, total


def tensor_dtypes(model: Path) -> set[str]:
    interp = Interpreter(model_path=str(model))
    return {np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
