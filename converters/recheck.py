"""``edge-convert verify``: re-check an existing bundle against data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundles.manifest import load_bundle_dir

from .data import load_dataset
from .errors import ConvertError
from .evidence import Proportion
from .hygiene import check_calibration
from .verify import float_tensors, run_model


def recheck(bundle_path: Path, data_path: Path, *, allow_poor_data: bool = False,
            ) -> dict[str, Any]:
    bundle = load_bundle_dir(bundle_path)
    assert bundle.manifest is not None and bundle.input_spec is not None
    data = load_dataset(data_path, class_names=bundle.labels or None)
    # The calibration checks, bar the sample count: figures on black or unreadable frames mean
    # nothing, whatever the model does with them.
    problems = check_calibration(data, bundle.input_spec,
                                 bundle.labels if data.labels is not None else None, minimum=1)
    if problems and not allow_poor_data:
        raise ConvertError(f"data {data_path}: {'; '.join(problems)} "
                           "(--allow-poor-data verifies anyway)")
    if bundle.input_spec.is_image:
        data = data.in_opencv_order()
    run = run_model(bundle.model_path, data, bundle.input_spec,
                    threads=int(bundle.profile.get("threads", 1) or 1))
    report: dict[str, Any] = {
        "bundle": str(bundle_path), "sha256_ok": True, "task": bundle.task,
        "samples": len(data), "size_bytes": bundle.model_path.stat().st_size,
        "host_latency_ms": round(run.latency_ms, 4),
        "fully_integer": not float_tensors(bundle.model_path),
        "manifest_float_accuracy": bundle.manifest.metrics.get("float_accuracy"),
        "manifest_int8_accuracy": bundle.manifest.metrics.get("int8_accuracy"),
        "accuracy": None,
        "data_problems": problems,
    }
    if bundle.task == "classification" and data.labels is not None:
        if run.outputs.shape[1] != max(1, len(bundle.labels) or run.outputs.shape[1]):
            raise ConvertError("the data's classes do not match the bundle's labels")
        right = int(np.sum(run.outputs.argmax(1) == data.labels))
        accuracy = Proportion(right, len(data))
        report["accuracy"] = round(accuracy.value, 5)
        report["accuracy_ci95"] = [round(v, 5) for v in accuracy.interval]
    return report
