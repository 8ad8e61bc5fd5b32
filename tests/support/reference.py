"""Reference statistics and golden samples for a real bundle, made the way the converter makes them
(SPEC §9: the same functions of ``edge_runtime.monitor``), from labelled image folders read as the
image source reads them. For tests of the device side on bundles made before those fields existed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.model import open_model
from edge_runtime.monitor.golden import GOLDEN_FILE, GoldenSample, write_golden
from edge_runtime.monitor.reference import (
    SCORE_EDGES,
    fit_temperature,
    histogram,
    input_statistics,
    margins,
)
from edge_runtime.sources.images import read_image

GOLDEN_SAMPLES = 16


def labelled_frames(folder: Path, labels: list[str]) -> tuple[list[Path], list[np.ndarray],
                                                               np.ndarray]:
    paths = [p for label in labels for p in sorted((folder / label).glob("*.png"))]
    truth = np.asarray([labels.index(p.parent.name) for p in paths])
    frames = [read_image(p) for p in paths]
    assert all(f is not None for f in frames)
    return paths, frames, truth  # type: ignore[return-value]


def annotate(bundle: Path, validation: Path) -> dict[str, Any]:
    """Add ``reference_stats`` (histograms, input statistics, temperature, accuracy) and
    ``golden.npz`` to ``bundle`` in place; return the reference statistics."""
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    labels = (bundle / "labels.txt").read_text().split()
    _, frames, truth = labelled_frames(validation, labels)
    model = open_model(bundle)
    probabilities, golden = [], []
    spread = {round(i * (len(frames) - 1) / (GOLDEN_SAMPLES - 1)) for i in range(GOLDEN_SAMPLES)}
    for i, frame in enumerate(frames):
        outcome, _ = model.run(frame)
        assert outcome.probabilities is not None
        probabilities.append(outcome.probabilities.astype(np.float64))
        if i in spread:
            raw = tuple(np.array(a, copy=True) for a in model.backend.get_outputs())
            golden.append(GoldenSample(frame, raw))
    model.close()
    probs = np.stack(probabilities)
    share = np.bincount(probs.argmax(axis=1), minlength=len(labels)) / len(probs)
    stats = dict(manifest.get("reference_stats") or {})
    stats.update({
        "predicted_class_share": {label: round(float(s), 6) for label, s in zip(labels, share,
                                                                                strict=True)},
        "histograms": {"top1_score": histogram(probs.max(axis=1), SCORE_EDGES).to_json(),
                       "margin": histogram(margins(probs), SCORE_EDGES).to_json()},
        "input": input_statistics(frames),
        "temperature": fit_temperature(probs, truth),
        "accuracy": round(float(np.mean(probs.argmax(axis=1) == truth)), 6),
        "samples": len(frames),
    })
    manifest["reference_stats"] = stats
    manifest_path.write_text(json.dumps(manifest, indent=2))
    write_golden(bundle / GOLDEN_FILE, golden)
    return stats
