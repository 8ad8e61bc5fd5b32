"""Verification on the target runtime (LiteRT): outputs, accuracy, agreement, latency.

Runs through ``edge_runtime.backends`` and ``edge_runtime.preprocess``: the very code the daemon
runs on the board, so the figures in a manifest are the figures the device will see.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends import BackendError, load_backend
from edge_runtime.postprocess import dequantize
from edge_runtime.preprocess import InputSpec, Preprocessor

from .data import Dataset
from .errors import ConvertError
from .evidence import DropEvidence, PairedCounts, Proportion, paired_counts

INTEGER_DTYPES = {"int8", "uint8", "int16", "int32", "int64", "bool"}


@dataclass
class ModelRun:
    """Dequantized first-output values for every sample, and the median invoke time."""

    outputs: np.ndarray
    latency_ms: float
    size_bytes: int
    input_spec: InputSpec
    output_dtype: str = "float32"


def _load(model: Path, threads: int) -> Any:
    try:
        return load_backend(model, threads=threads)
    except BackendError as exc:
        raise ConvertError(f"verification failed: {exc}") from None


def _spec_from_backend(backend: Any, base: InputSpec) -> InputSpec:
    info = backend.inputs[0]
    return base.with_quantization(info.dtype, float(info.scale), int(info.zero_point))


def run_model(model: Path, data: Dataset, base: InputSpec, threads: int = 1,
              latency_runs: int = 50) -> ModelRun:
    """Feed every item through the daemon's preprocessing and the model; time the invoke."""
    threads = max(1, min(threads, os.cpu_count() or 1))
    backend = _load(model, threads)
    try:
        spec = _spec_from_backend(backend, base)
        pre = Preprocessor(spec)
        out_info = backend.outputs[0]
        results = []
        for item in data.items:
            backend.fill_input(lambda buf, item=item: pre(item, out=buf))
            backend.invoke()
            raw = backend.get_outputs()[0]
            results.append(dequantize(raw, out_info.scale, out_info.zero_point).reshape(-1))
        latency = _median_invoke(backend, min(latency_runs, max(10, len(data))))
    finally:
        backend.close()
    return ModelRun(np.stack(results), latency, model.stat().st_size, spec, out_info.dtype)


def _median_invoke(backend: Any, runs: int) -> float:
    backend.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        backend.invoke()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def tensor_dtypes(model: Path) -> dict[str, list[str]]:
    """Names of the model's tensors grouped by dtype (to prove a graph is fully integer)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model))
    groups: dict[str, list[str]] = {}
    for detail in interp.get_tensor_details():
        groups.setdefault(np.dtype(detail["dtype"]).name, []).append(detail["name"])
    return groups


def float_tensors(model: Path) -> list[str]:
    groups = tensor_dtypes(model)
    return [name for dtype, names in groups.items() if dtype not in INTEGER_DTYPES
            for name in names]


@dataclass
class Comparison:
    float_accuracy: float | None
    int8_accuracy: float | None
    agreement: float
    samples: int
    drop_points: float
    basis: str
    agreeing: int = 0                       # samples (or matched boxes) the two models agree on
    paired: PairedCounts | None = None      # with labels: right/wrong per model, per sample
    evidence: DropEvidence | None = None    # a drop measured otherwise (detection: bootstrap)
    detection: dict[str, Any] | None = None

    @property
    def agreement_proportion(self) -> Proportion:
        return Proportion(self.agreeing, self.samples)

    def intervals(self) -> dict[str, Any]:
        """Every figure with its sample count and 95% interval."""
        if self.detection is not None:
            return dict(self.detection.get("intervals", {}))
        found: dict[str, Any] = {"agreement": self.agreement_proportion.to_json()}
        if self.paired is not None:
            p = self.paired
            found["float_accuracy"] = Proportion(p.both + p.float_only, p.n).to_json()
            found["int8_accuracy"] = Proportion(p.both + p.int8_only, p.n).to_json()
            low, high = p.drop_interval()
            found["accuracy_drop_points"] = {"value": round(p.drop * 100, 3), "n": p.n,
                                             "ci95": [round(low * 100, 3), round(high * 100, 3)]}
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "float_accuracy": _r(self.float_accuracy), "int8_accuracy": _r(self.int8_accuracy),
            "agreement": _r(self.agreement), "samples": self.samples,
            "accuracy_drop_points": round(self.drop_points, 3), "gate_basis": self.basis,
        }


def compare(task: str, float_out: np.ndarray, quant_out: np.ndarray,
            labels: np.ndarray | None) -> Comparison:
    """Accuracy (when labelled), top-1 agreement or output agreement, and the gate's drop."""
    n = len(float_out)
    if task == "classification" and float_out.shape[1] > 1:
        f_top, q_top = float_out.argmax(1), quant_out.argmax(1)
        agreeing = int(np.sum(f_top == q_top))
        agreement = agreeing / n
        if labels is not None and len(labels) == n and np.all(labels >= 0):
            fa, qa = float(np.mean(f_top == labels)), float(np.mean(q_top == labels))
            paired = paired_counts(list(f_top == labels), list(q_top == labels))
            return Comparison(fa, qa, agreement, n, (fa - qa) * 100.0, "accuracy", agreeing,
                              paired)
        return Comparison(None, None, agreement, n, (1 - agreement) * 100.0, "disagreement",
                          agreeing)
    span = float(np.ptp(float_out)) or 1.0
    close = np.max(np.abs(float_out - quant_out), axis=1) <= 0.05 * span
    agreeing = int(np.sum(close))
    return Comparison(None, None, agreeing / n, n, (1 - agreeing / n) * 100.0, "disagreement",
                      agreeing)


def looks_like_probabilities(outputs: np.ndarray) -> bool:
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        return False
    sums = outputs.sum(axis=1)
    return bool(np.all(outputs >= -1e-3) and np.all(outputs <= 1 + 1e-3)
                and np.allclose(sums, 1.0, atol=0.05))


def reference_stats(task: str, outputs: np.ndarray, class_names: list[str] | None,
                    softmax: bool) -> dict[str, Any]:
    """Output statistics on validation data: the baseline a device compares drift against."""
    if task == "classification" and outputs.shape[1] > 1:
        probs = _softmax(outputs) if softmax else outputs
        top = probs.max(axis=1)
        counts = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]) / len(probs)
        names = class_names or [str(i) for i in range(probs.shape[1])]
        return {
            "top1_score": _describe(top),
            "predicted_class_share": {names[i]: round(float(c), 4) for i, c in enumerate(counts)},
            "samples": len(outputs),
        }
    return {"outputs": _describe(outputs.reshape(-1)), "samples": len(outputs)}


def _describe(values: np.ndarray) -> dict[str, float]:
    p = np.percentile(values, [5, 50, 95])
    return {"mean": round(float(np.mean(values)), 5), "std": round(float(np.std(values)), 5),
            "p5": round(float(p[0]), 5), "p50": round(float(p[1]), 5),
            "p95": round(float(p[2]), 5)}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 5)
