"""Per-frame timings, rates and counters: cheap to record, snapshotted as JSON-ready dicts.

Recording happens on the hot path (several calls per frame, from the capture and inference
threads), so each record is a lock and a few list operations; percentiles are computed only when
a snapshot is taken.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np

STAGES = ("capture", "preprocess", "inference", "postprocess", "publish", "total")
FRAME_COUNTERS = ("captured", "processed", "dropped", "errors")
DEFAULT_CAPACITY = 2048
DEFAULT_WINDOW_S = 5.0
PERCENTILES = (50, 95, 99)
Clock = Callable[[], float]
JsonScalar = float | int | str | bool | None
GaugeValue = JsonScalar | np.generic
Gauge = GaugeValue | Callable[[], GaugeValue]


def _round(value: float, digits: int) -> float:
    return round(float(value), digits)


class LatencyStats:
    """The most recent ``capacity`` durations of one stage, summarised in milliseconds."""

    __slots__ = ("_capacity", "_count", "_lock", "_next", "_samples")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._samples = [0.0] * capacity
        self._next = 0
        self._count = 0
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        """Add one duration measured in seconds (a ``perf_counter`` difference)."""
        self.record_ms(seconds * 1000.0)

    def record_ms(self, ms: float) -> None:
        """Add one duration in milliseconds. Non-finite values are ignored."""
        if not math.isfinite(ms):
            return
        with self._lock:
            self._samples[self._next] = ms
            self._next = (self._next + 1) % self._capacity
            self._count += 1

    @contextmanager
    def time(self) -> Iterator[None]:
        """Record how long the ``with`` block took."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(time.perf_counter() - start)

    @property
    def count(self) -> int:
        """Durations recorded since creation (not only the ones still kept)."""
        return self._count

    def recent_ms(self) -> np.ndarray:
        """A copy of the kept samples, oldest first."""
        with self._lock:
            count, start = self._count, self._next
            samples = list(self._samples)
        if count < self._capacity:
            return np.asarray(samples[:count], dtype=np.float64)
        return np.asarray(samples[start:] + samples[:start], dtype=np.float64)

    def summary(self) -> dict[str, float | int | None]:
        """``count``, ``p50``, ``p95``, ``p99``, ``mean`` and ``max`` in ms (None when empty)."""
        samples = self.recent_ms()
        out: dict[str, float | int | None] = {"count": self._count}
        if samples.size == 0:
            out.update({f"p{q}": None for q in PERCENTILES} | {"mean": None, "max": None})
            return out
        for q, value in zip(PERCENTILES, np.percentile(samples, PERCENTILES), strict=True):
            out[f"p{q}"] = _round(value, 3)
        out["mean"] = _round(samples.mean(), 3)
        out["max"] = _round(samples.max(), 3)
        return out

    def reset(self) -> None:
        with self._lock:
            self._next = 0
            self._count = 0


class RateMeter:
    """Events per second over a sliding window, kept in ``resolution`` time buckets.

    Memory stays bounded whatever the rate. Until a full window has passed since the first event,
    the rate is measured over the time since that event.
    """

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, *, resolution: int = 50,
                 clock: Clock = time.monotonic) -> None:
        if window_s <= 0 or resolution < 1:
            raise ValueError("window_s must be positive and resolution at least 1")
        self.window_s = float(window_s)
        self._width = self.window_s / resolution
        self._clock = clock
        self._buckets: deque[list[float]] = deque(maxlen=resolution + 2)
        self._first: float | None = None
        self._total = 0
        self._lock = threading.Lock()

    def tick(self, n: int = 1) -> None:
        """Count ``n`` events happening now."""
        now = self._clock()
        key = float(now // self._width)
        with self._lock:
            if self._first is None:
                self._first = now
            self._total += n
            if self._buckets and self._buckets[-1][0] == key:
                self._buckets[-1][1] += n
            else:
                self._buckets.append([key, float(n)])

    @property
    def total(self) -> int:
        return self._total

    def rate(self) -> float:
        """Events per second over the window ending now."""
        now = self._clock()
        with self._lock:
            first, total = self._first, self._total
            buckets = [(key, count) for key, count in self._buckets]
        if first is None:
            return 0.0
        elapsed = now - first
        if elapsed < self.window_s:
            # Count intervals, not events: the first event opens the measurement.
            return (total - 1) / elapsed if elapsed > 0 and total > 1 else 0.0
        return self._in_window(buckets, now - self.window_s) / self.window_s

    def _in_window(self, buckets: list[tuple[float, float]], start: float) -> float:
        events = 0.0
        for key, count in buckets:
            bucket_start = key * self._width
            bucket_end = bucket_start + self._width
            if bucket_end <= start:
                continue
            inside = 1.0 if bucket_start >= start else (bucket_end - start) / self._width
            events += count * inside
        return events


class Counters:
    """Named integer counters, safe to bump from any thread."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._values: dict[str, int] = dict.fromkeys(names, 0)
        self._lock = threading.Lock()

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def get(self, name: str) -> int:
        return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class PipelineMetrics:
    """Timings per stage, frame counters and rates of one pipeline."""

    def __init__(self, name: str, *, capacity: int = DEFAULT_CAPACITY,
                 window_s: float = DEFAULT_WINDOW_S, clock: Clock = time.monotonic) -> None:
        self.name = name
        self._capacity = capacity
        self.stages: dict[str, LatencyStats] = {s: LatencyStats(capacity) for s in STAGES}
        self.counters = Counters(FRAME_COUNTERS)
        self.fps = RateMeter(window_s, clock=clock)
        self.capture_fps = RateMeter(window_s, clock=clock)
        self._info: dict[str, object] = {}
        self._lock = threading.Lock()

    def stage(self, name: str) -> LatencyStats:
        """The stats of stage ``name``, created on first use for stages beyond :data:`STAGES`."""
        stats = self.stages.get(name)
        if stats is None:
            with self._lock:
                stats = self.stages.setdefault(name, LatencyStats(self._capacity))
        return stats

    def record(self, stage: str, seconds: float) -> None:
        self.stage(stage).record(seconds)

    def record_ms(self, stage: str, ms: float) -> None:
        self.stage(stage).record_ms(ms)

    def record_timings_ms(self, timings: Mapping[str, float]) -> None:
        """Record a result's ``timing_ms`` dict in one call."""
        for stage, ms in timings.items():
            self.stage(stage).record_ms(ms)

    def frame_captured(self) -> None:
        self.counters.inc("captured")
        self.capture_fps.tick()

    def frame_processed(self) -> None:
        self.counters.inc("processed")
        self.fps.tick()

    def frames_dropped(self, n: int = 1) -> None:
        self.counters.inc("dropped", n)

    def error(self) -> None:
        self.counters.inc("errors")

    def set_info(self, key: str, value: object) -> None:
        """Attach a fact that appears in every snapshot (model sha, source, delegate, ...)."""
        with self._lock:
            self._info[key] = value

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            info = dict(self._info)
            stages = dict(self.stages)
        return {
            **info,
            "fps": _round(self.fps.rate(), 2),
            "capture_fps": _round(self.capture_fps.rate(), 2),
            "frames": self.counters.snapshot(),
            "latency_ms": {name: stats.summary() for name, stats in stages.items()},
        }


class MetricsRegistry:
    """Every pipeline's metrics plus device-wide counters and gauges, for the metrics topic."""

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY, window_s: float = DEFAULT_WINDOW_S,
                 clock: Clock = time.monotonic, include_system: bool = True) -> None:
        self._capacity = capacity
        self._window_s = window_s
        self._clock = clock
        self._started = clock()
        self._include_system = include_system
        self._pipelines: dict[str, PipelineMetrics] = {}
        self._gauges: dict[str, Gauge] = {}
        self._lock = threading.Lock()
        self.counters = Counters()

    def pipeline(self, name: str = "default") -> PipelineMetrics:
        """The metrics of pipeline ``name``, created on first use."""
        with self._lock:
            metrics = self._pipelines.get(name)
            if metrics is None:
                metrics = PipelineMetrics(
                    name, capacity=self._capacity, window_s=self._window_s, clock=self._clock
                )
                self._pipelines[name] = metrics
            return metrics

    def pipelines(self) -> list[str]:
        with self._lock:
            return list(self._pipelines)

    def remove(self, name: str) -> None:
        with self._lock:
            self._pipelines.pop(name, None)

    def set_gauge(self, name: str, value: Gauge) -> None:
        """A value read at snapshot time; a callable (e.g. ``outbox.depth``) is read live."""
        with self._lock:
            self._gauges[name] = value

    def snapshot(self) -> dict[str, object]:
        """Everything, JSON-ready and rounded."""
        with self._lock:
            pipelines = dict(self._pipelines)
            gauges = dict(self._gauges)
        snap: dict[str, object] = {
            "uptime_s": _round(self._clock() - self._started, 1),
            "pipelines": {name: p.snapshot() for name, p in pipelines.items()},
            "counters": self.counters.snapshot(),
            "gauges": {name: _read_gauge(g) for name, g in gauges.items()},
        }
        if self._include_system:
            from edge_runtime.system.sysinfo import process_snapshot

            snap["system"] = process_snapshot()
        return snap


def _read_gauge(gauge: Gauge) -> JsonScalar:
    try:
        value = gauge() if callable(gauge) else gauge
    except Exception:  # a failing gauge must not cost the whole snapshot
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, JsonScalar) else str(value)
