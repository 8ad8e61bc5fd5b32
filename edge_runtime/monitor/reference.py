"""What a bundle says its model should look like on good data (``reference_stats``, SPEC §9),
and the population stability index that measures how far a window of results has moved from it.

The converter writes the reference from the validation data (:func:`histogram`,
:func:`input_statistics` and :func:`fit_temperature` are shared with it, so host and board bin the
same way); the monitor reads it with :func:`Reference.from_stats`, tolerating bundles made before
these fields existed (a missing part is simply not checked).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np

SCORE_EDGES: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(11))
BRIGHTNESS_EDGES: tuple[float, ...] = tuple(float(i) for i in range(0, 257, 16))
DETECTIONS_EDGES: tuple[float, ...] = (0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 1e9)
PSI_FLOOR = 1e-4   # an empty bin on one side must not make the index infinite


@dataclass(frozen=True)
class Histogram:
    """Shares of observations per bin; ``edges`` has one more entry than ``shares``."""

    edges: tuple[float, ...]
    shares: tuple[float, ...]

    def to_json(self) -> dict[str, list[float]]:
        return {"edges": [round(e, 6) for e in self.edges],
                "shares": [round(s, 6) for s in self.shares]}

    @classmethod
    def from_json(cls, data: object) -> Histogram | None:
        if not isinstance(data, Mapping):
            return None
        edges, shares = data.get("edges"), data.get("shares")
        if not _numbers(edges) or not _numbers(shares) or len(edges) != len(shares) + 1:
            return None
        return cls(tuple(float(e) for e in edges), tuple(float(s) for s in shares))


def histogram(values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> Histogram:
    """Shares of ``values`` per bin; values beyond the ends fall into the first or last bin."""
    array = np.clip(np.asarray(values, dtype=np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(array, bins=np.asarray(edges, dtype=np.float64))
    total = max(1, int(counts.sum()))
    return Histogram(tuple(float(e) for e in edges), tuple(float(c) / total for c in counts))


def psi(reference: Sequence[float], observed: Sequence[float]) -> float:
    """Population stability index of ``observed`` shares against ``reference`` shares.

    0.1 is the usual "worth a look" and 0.25 the "has shifted" level.
    """
    total = 0.0
    for ref, obs in zip(reference, observed, strict=True):
        r, o = max(float(ref), PSI_FLOOR), max(float(obs), PSI_FLOOR)
        total += (o - r) * math.log(o / r)
    return total


def margins(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row."""
    if probabilities.shape[-1] < 2:
        return np.ones(probabilities.shape[:-1])
    top2 = np.partition(probabilities, -2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def calibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities softened (T > 1) or sharpened (T < 1): ``softmax(log p / T)``."""
    if temperature == 1.0:
        return probabilities
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def fit_temperature(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The temperature at which the mean calibrated top-1 probability equals the accuracy on
    ``truth`` (class indexes): the board then reads its mean top-1 score as an accuracy estimate.
    1.0 when there is too little to fit on."""
    if len(truth) < 10 or probabilities.ndim != 2 or probabilities.shape[1] < 2:
        return 1.0
    accuracy = float(np.mean(probabilities.argmax(axis=1) == truth))

    def confidence(t: float) -> float:
        return float(calibrated(probabilities, t).max(axis=1).mean())

    # Confidence falls as the temperature rises: bisect on a log scale.
    low, high = math.log(0.05), math.log(50.0)
    for _ in range(40):
        mid = (low + high) / 2
        if confidence(math.exp(mid)) > accuracy:
            low = mid
        else:
            high = mid
    return round(math.exp((low + high) / 2), 4)


def input_statistics(frames: Sequence[np.ndarray]) -> dict[str, Any]:
    """Per-channel pixel mean and std and the brightness histogram of raw frames (as a source
    delivers them), the way the monitor measures them on the board."""
    means = np.array([frame_means(f) for f in frames], dtype=np.float64)
    brightness = means.mean(axis=1)
    return {"mean": [round(float(v), 3) for v in means.mean(axis=0)],
            "std": [round(float(v), 3) for v in means.std(axis=0)],
            "brightness": histogram(brightness, BRIGHTNESS_EDGES).to_json()}


def frame_means(frame: np.ndarray) -> np.ndarray:
    """Per-channel mean of a frame, on every 4th pixel each way (cheap and close enough)."""
    sample = frame[::4, ::4] if frame.ndim >= 2 and frame.shape[0] > 8 else frame
    if sample.ndim == 2:
        return np.array([float(sample.mean())])
    return np.asarray(sample.reshape(-1, sample.shape[-1]).mean(axis=0), dtype=np.float64)


@dataclass
class Reference:
    """The parts of ``reference_stats`` the monitor compares against."""

    class_share: dict[str, float] = field(default_factory=dict)
    top1: Histogram | None = None
    margin: Histogram | None = None
    brightness: Histogram | None = None
    detections: Histogram | None = None
    saturated_share: float | None = None
    channel_mean: tuple[float, ...] = ()   # per-channel mean pixel of a frame, over frames
    channel_std: tuple[float, ...] = ()    # and its spread from frame to frame
    temperature: float = 1.0
    accuracy: float | None = None

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any] | None) -> Reference:
        stats = stats or {}
        hists = stats.get("histograms") if isinstance(stats.get("histograms"), Mapping) else {}
        assert isinstance(hists, Mapping)
        inputs = stats.get("input") if isinstance(stats.get("input"), Mapping) else {}
        assert isinstance(inputs, Mapping)
        share = stats.get("predicted_class_share")
        temperature = stats.get("temperature")
        accuracy = stats.get("accuracy")
        saturated = inputs.get("saturated_share")
        return cls(
            class_share={str(k): float(v) for k, v in share.items() if _number(v)}
            if isinstance(share, Mapping) else {},
            top1=Histogram.from_json(hists.get("top1_score")),
            margin=Histogram.from_json(hists.get("margin")),
            brightness=Histogram.from_json(inputs.get("brightness")),
            detections=Histogram.from_json(hists.get("detections_per_frame")),
            saturated_share=float(saturated) if _number(saturated) else None,
            channel_mean=_vector(inputs.get("mean")),
            channel_std=_vector(inputs.get("std")),
            temperature=float(temperature) if _number(temperature) and temperature > 0 else 1.0,
            accuracy=float(accuracy) if _number(accuracy) and 0 <= accuracy <= 1 else None,
        )

    @property
    def empty(self) -> bool:
        return not (self.class_share or self.top1 or self.margin or self.brightness
                    or self.detections or self.accuracy is not None)


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _vector(values: object) -> tuple[float, ...]:
    return tuple(float(v) for v in values) if _numbers(values) else ()


def _numbers(values: object) -> TypeGuard[list[float]]:
    return isinstance(values, list) and bool(values) and all(_number(v) for v in values)
