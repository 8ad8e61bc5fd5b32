"""The health of one pipeline, window by window: is what is served still what was verified?

Each result is observed on the pipeline thread (a few microseconds: some numbers appended, a
frame sampled on a coarse grid). When a window closes (``window`` results, or ``max_window_s`` at
low rates) the window is compared with the bundle's reference: the population stability index of
the class mix, the top-1 score and margin histograms and the frame brightness; the accuracy
estimated from calibrated scores against the reference accuracy; frozen and blank frames; the
latency p95 against the profile's budget. The verdict is ``ok``, ``warn`` or ``alarm`` with the
reasons, published as ``edge-health/1`` on ``edge/D/P/health``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.monitor.reference import (
    BRIGHTNESS_EDGES,
    DETECTIONS_EDGES,
    PSI_FLOOR,
    SCORE_EDGES,
    Reference,
    calibrated,
    histogram,
    margins,
    psi,
)

SCHEMA = "edge-health/1"
VERDICTS = ("ok", "warn", "alarm")
BLANK_STD = 2.0   # a frame whose sampled pixels vary less than this is blank
GRID = 32         # frames are sampled on at most GRID × GRID pixels
CHANCE_WARN, CHANCE_ALARM = 0.99, 0.999   # chance reaches these once in 100 / 1,000 windows
CHANCE_DRAWS = 4000


@dataclass(frozen=True)
class MonitorSettings:
    window: int = 500
    max_window_s: float = 300.0
    min_results: int = 30          # a window closed by time with fewer is reported, not judged
    psi_warn: float = 0.1
    psi_alarm: float = 0.25
    accuracy_warn_points: float = 3.0
    accuracy_alarm_points: float = 8.0
    channel_warn_sd: float = 1.0   # a channel's mean moved this many frame-to-frame spreads
    channel_alarm_sd: float = 2.0
    frozen_alarm_share: float = 0.5
    blank_alarm_share: float = 0.5


@dataclass
class _Window:
    started: float
    probabilities: list[np.ndarray] = field(default_factory=list)
    detections: list[int] = field(default_factory=list)
    brightness: list[float] = field(default_factory=list)
    channels: list[np.ndarray] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    frames: int = 0
    frozen: int = 0
    blank: int = 0
    results: int = 0


@functools.lru_cache(maxsize=64)
def chance_psi(shares: tuple[float, ...], n: int, quantile: float) -> float:
    """The PSI that chance alone exceeds in a share ``1 - quantile`` of windows of ``n`` results
    drawn from the reference itself (``shares``), found by drawing such windows (seeded, so the
    same every time; cached per reference and window size). Small windows are noisy, above all
    over many bins; a shift is only reported beyond both this and the configured level."""
    if n < 1:
        return float("inf")
    p = np.clip(np.asarray(shares, dtype=np.float64), 0.0, None)
    if p.sum() <= 0:
        return 0.0
    p /= p.sum()
    counts = np.random.default_rng(0).multinomial(n, p, size=CHANCE_DRAWS)
    r = np.maximum(p, PSI_FLOOR)
    o = np.maximum(counts / n, PSI_FLOOR)
    values = ((o - r) * np.log(o / r)).sum(axis=1)
    return float(np.quantile(values, quantile))


class HealthMonitor:
    """Observes one pipeline's results; :meth:`observe` returns a report when a window closes."""

    def __init__(self, reference: Reference, labels: Sequence[str], *, budget_ms: float | None,
                 settings: MonitorSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or MonitorSettings()
        self._clock = clock
        self._index = 0
        self._previous = b""
        self.last: dict[str, Any] | None = None
        self._shares: dict[str, tuple[float, ...]] = {}
        self._counts: dict[str, int] = {}
        self.retarget(reference, labels, budget_ms)

    def retarget(self, reference: Reference, labels: Sequence[str], budget_ms: float | None,
                 ) -> None:
        """A new model serves: compare with its reference from a fresh window on."""
        self.reference = reference
        self.labels = list(labels)
        self.budget_ms = budget_ms
        self._window = _Window(self._clock())
        # What chance gives a full window of this reference, worked out now rather than on the
        # pipeline thread when the first window closes.
        shares = [tuple(reference.class_share.get(name, 0.0) for name in self.labels)]
        shares += [h.shares for h in (reference.top1, reference.margin, reference.brightness,
                                      reference.detections) if h is not None]
        for one in shares:
            for quantile in (CHANCE_WARN, CHANCE_ALARM):
                chance_psi(one, self.settings.window, quantile)

    def observe(self, *, latency_ms: float, probabilities: np.ndarray | None = None,
                detections: int | None = None, frame: np.ndarray | None = None,
                ) -> dict[str, Any] | None:
        w = self._window
        w.results += 1
        w.latency.append(latency_ms)
        if probabilities is not None and probabilities.size > 1:
            w.probabilities.append(probabilities)   # a fresh array per result: no copy needed
        if detections is not None:
            w.detections.append(detections)
        if frame is not None and frame.size:
            self._observe_frame(w, frame)
        now = self._clock()
        if w.results >= self.settings.window or now - w.started >= self.settings.max_window_s:
            return self._close(now)
        return None

    def _observe_frame(self, w: _Window, frame: np.ndarray) -> None:
        """Brightness, blank and frozen on a grid of at most GRID × GRID pixels: a few
        microseconds whatever the frame size."""
        if frame.ndim >= 2:
            frame = frame[::max(1, frame.shape[0] // GRID), ::max(1, frame.shape[1] // GRID)]
        w.frames += 1
        raw = frame.tobytes()
        if raw == self._previous:
            w.frozen += 1
        self._previous = raw
        values = np.frombuffer(raw, dtype=np.uint8).astype(np.float32)
        if frame.ndim == 3:
            w.channels.append(values.reshape(-1, frame.shape[2]).mean(axis=0))
        mean = float(values.sum()) / values.size
        w.brightness.append(mean)
        if float(values @ values) / values.size - mean * mean < BLANK_STD * BLANK_STD:
            w.blank += 1

    def _close(self, now: float) -> dict[str, Any]:
        w, s, ref = self._window, self.settings, self.reference
        self._index += 1
        self._window = _Window(now)
        shifts: dict[str, float] = {}
        self._shares, self._counts = {}, {}
        top1: list[float] = []
        margin: list[float] = []
        classes = np.zeros(0, dtype=np.int64)
        estimated = None
        shapes = {p.size for p in w.probabilities}
        if len(shapes) == 1:   # one model's outputs (a swap starts a fresh window)
            probs = np.stack([p.reshape(-1) for p in w.probabilities]).astype(np.float64)
            classes = probs.argmax(axis=1)
            top1 = probs.max(axis=1).tolist()
            margin = margins(probs).tolist()
            estimated = float(calibrated(probs, ref.temperature).max(axis=1).mean())
        if ref.class_share and classes.size and len(self.labels) == len(ref.class_share):
            counts = np.bincount(classes, minlength=len(self.labels)) / classes.size
            expected = [ref.class_share.get(name, 0.0) for name in self.labels]
            shifts["class_mix"] = psi(expected, counts.tolist())
            self._shares["class_mix"] = tuple(expected)
            self._counts["class_mix"] = int(classes.size)
        for name, hist, values, edges in (
                ("top1_score", ref.top1, top1, SCORE_EDGES),
                ("margin", ref.margin, margin, SCORE_EDGES),
                ("brightness", ref.brightness, w.brightness, BRIGHTNESS_EDGES),
                ("detections_per_frame", ref.detections, w.detections, DETECTIONS_EDGES)):
            if hist is not None and values:
                shifts[name] = psi(hist.shares, histogram(values, hist.edges or edges).shares)
                self._shares[name] = hist.shares
                self._counts[name] = len(values)
        report: dict[str, Any] = {
            "schema": SCHEMA, "verdict": "ok",
            "window": {"index": self._index, "results": w.results,
                       "seconds": round(now - w.started, 3)},
            "reasons": [],
            "psi": {k: round(v, 4) for k, v in shifts.items()},
            "estimated_accuracy": None if estimated is None else round(estimated, 4),
            "reference_accuracy": ref.accuracy,
            "frozen_share": round(w.frozen / w.frames, 4) if w.frames else None,
            "blank_share": round(w.blank / w.frames, 4) if w.frames else None,
            "latency_p95_ms": round(float(np.percentile(w.latency, 95)), 3),
            "latency_budget_ms": self.budget_ms,
            "channel_shift_sd": self._channel_shift(w),
            "ts": round(time.time(), 3),
        }
        if w.results < s.min_results:
            report["reasons"].append(f"only {w.results} result(s) in this window: not judged")
        else:
            self._judge(report, shifts, estimated, w)
        self.last = report
        return report

    def _channel_shift(self, w: _Window) -> list[float] | None:
        """How far each channel's mean pixel moved from the reference, in units of its
        frame-to-frame spread there (a colour cast moves one channel, not the brightness)."""
        ref = self.reference
        if not w.channels or len(ref.channel_mean) != w.channels[0].size \
                or len(ref.channel_std) != len(ref.channel_mean):
            return None
        window = np.mean(np.stack(w.channels), axis=0)
        spread = np.maximum(np.asarray(ref.channel_std), 1.0)
        return [round(float(v), 3) for v in np.abs(window - np.asarray(ref.channel_mean)) / spread]

    def _judge(self, report: dict[str, Any], shifts: dict[str, float], estimated: float | None,
               w: _Window) -> None:
        s, ref = self.settings, self.reference
        problems: list[tuple[str, str]] = []
        for name, value in sorted(shifts.items(), key=lambda kv: -kv[1]):
            words = name.replace("_", " ")
            shares, n = self._shares.get(name, ()), self._counts.get(name, w.results)
            alarm = max(s.psi_alarm, chance_psi(shares, n, CHANCE_ALARM))
            warn = max(s.psi_warn, chance_psi(shares, n, CHANCE_WARN))
            if value >= alarm:
                problems.append(("alarm", f"{words} shifted (PSI {value:.2f} ≥ {alarm:.2g})"))
            elif value >= warn:
                problems.append(("warn", f"{words} drifting (PSI {value:.2f} ≥ {warn:.2g})"))
        if estimated is not None and ref.accuracy is not None:
            drop = (ref.accuracy - estimated) * 100
            text = (f"estimated accuracy {estimated * 100:.1f}% is {drop:.1f} points below the "
                    f"reference {ref.accuracy * 100:.1f}%")
            if drop >= s.accuracy_alarm_points:
                problems.append(("alarm", text))
            elif drop >= s.accuracy_warn_points:
                problems.append(("warn", text))
        if w.frames:
            if w.frozen / w.frames >= s.frozen_alarm_share:
                problems.append(("alarm", f"{w.frozen} of {w.frames} frames frozen"))
            if w.blank / w.frames >= s.blank_alarm_share:
                problems.append(("alarm", f"{w.blank} of {w.frames} frames blank"))
        moved = report.get("channel_shift_sd") or []
        if moved and max(moved) >= s.channel_warn_sd:
            channel = int(np.argmax(moved))
            level = "alarm" if moved[channel] >= s.channel_alarm_sd else "warn"
            problems.append((level, f"input channel {channel} mean moved {moved[channel]:.1f} "
                                    "frame-to-frame spreads from the reference"))
        p95 = report["latency_p95_ms"]
        if self.budget_ms and p95 > self.budget_ms:
            problems.append(("warn", f"latency p95 {p95:g} ms over the {self.budget_ms:g} ms "
                                     "budget"))
        levels = [level for level, _ in problems]
        report["verdict"] = "alarm" if "alarm" in levels else "warn" if levels else "ok"
        report["reasons"] = [text for _, text in problems]
