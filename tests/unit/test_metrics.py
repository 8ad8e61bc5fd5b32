"""Latency percentiles, rates, counters and the JSON snapshot of the metrics topic."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.metrics import (
    STAGES,
    Counters,
    LatencyStats,
    MetricsRegistry,
    PipelineMetrics,
    RateMeter,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def tick_at_fps(meter: RateMeter, clock: FakeClock, fps: float, seconds: float) -> None:
    for _ in range(round(fps * seconds)):
        meter.tick()
        clock.advance(1.0 / fps)


def run_threads(target: object, count: int = 4) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]  # type: ignore[arg-type]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# --- LatencyStats ----------------------------------------------------------------------------


def test_percentiles_in_milliseconds() -> None:
    stats = LatencyStats()
    for ms in range(1, 101):
        stats.record(ms / 1000.0)
    summary = stats.summary()
    assert summary["count"] == 100
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p95"] == pytest.approx(95.05)
    assert summary["p99"] == pytest.approx(99.01)
    assert summary["mean"] == pytest.approx(50.5)
    assert summary["max"] == pytest.approx(100.0)


def test_ring_buffer_keeps_the_newest_samples() -> None:
    stats = LatencyStats(capacity=10)
    for ms in range(100):
        stats.record_ms(float(ms))
    np.testing.assert_array_equal(stats.recent_ms(), np.arange(90, 100, dtype=float))
    assert stats.count == 100
    assert stats.summary()["p50"] == pytest.approx(94.5)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(0, 1e4), min_size=1, max_size=300),
       capacity=st.integers(1, 64))
def test_summary_matches_numpy_over_the_kept_window(values: list[float], capacity: int) -> None:
    stats = LatencyStats(capacity=capacity)
    for v in values:
        stats.record_ms(v)
    kept = np.asarray(values[-capacity:])
    summary = stats.summary()
    for q in (50, 95, 99):
        assert summary[f"p{q}"] == pytest.approx(round(float(np.percentile(kept, q)), 3),
                                                 abs=1e-3)
    assert summary["max"] == pytest.approx(round(float(kept.max()), 3), abs=1e-3)


def test_empty_and_non_finite() -> None:
    stats = LatencyStats()
    stats.record_ms(float("nan"))
    stats.record(float("inf"))
    assert stats.summary() == {"count": 0, "p50": None, "p95": None, "p99": None,
                               "mean": None, "max": None}
    json.dumps(stats.summary(), allow_nan=False)


def test_time_context_records_a_duration() -> None:
    stats = LatencyStats()
    with stats.time():
        time.sleep(0.002)
    assert stats.count == 1
    assert stats.recent_ms()[0] >= 1.0


def test_concurrent_records_are_all_counted() -> None:
    stats = LatencyStats(capacity=16)

    def work() -> None:
        for _ in range(5000):
            stats.record_ms(1.0)

    run_threads(work)
    assert stats.count == 20000


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        LatencyStats(capacity=0)


# --- RateMeter -------------------------------------------------------------------------------


def test_rate_over_a_full_window() -> None:
    clock = FakeClock()
    meter = RateMeter(window_s=5.0, clock=clock)
    tick_at_fps(meter, clock, fps=30.0, seconds=12.0)
    assert meter.rate() == pytest.approx(30.0, rel=0.03)
    assert meter.total == 360


def test_rate_during_warm_up() -> None:
    clock = FakeClock()
    meter = RateMeter(window_s=5.0, clock=clock)
    assert meter.rate() == 0.0
    tick_at_fps(meter, clock, fps=20.0, seconds=1.0)
    assert meter.rate() == pytest.approx(20.0, rel=0.06)


def test_rate_follows_a_change_and_decays_to_zero() -> None:
    clock = FakeClock()
    meter = RateMeter(window_s=2.0, clock=clock)
    tick_at_fps(meter, clock, fps=50.0, seconds=4.0)
    tick_at_fps(meter, clock, fps=10.0, seconds=4.0)
    assert meter.rate() == pytest.approx(10.0, rel=0.1)
    clock.advance(2.5)
    assert meter.rate() == 0.0


def test_rate_memory_is_bounded() -> None:
    clock = FakeClock()
    meter = RateMeter(window_s=1.0, resolution=10, clock=clock)
    tick_at_fps(meter, clock, fps=2000.0, seconds=5.0)
    assert len(meter._buckets) <= 12
    assert meter.rate() == pytest.approx(2000.0, rel=0.02)


# --- Counters --------------------------------------------------------------------------------


def test_counters_are_thread_safe() -> None:
    counters = Counters(["dropped"])

    def work() -> None:
        for _ in range(5000):
            counters.inc("processed")

    run_threads(work)
    counters.inc("dropped", 3)
    assert counters.snapshot() == {"dropped": 3, "processed": 20000}
    assert counters.get("missing") == 0


# --- PipelineMetrics and MetricsRegistry -----------------------------------------------------


def test_pipeline_snapshot() -> None:
    clock = FakeClock()
    pipe = PipelineMetrics("cam", clock=clock)
    pipe.set_info("model_sha256", "abc")
    for _ in range(60):
        pipe.frame_captured()
        pipe.frame_processed()
        pipe.record_timings_ms({"preprocess": 0.5, "inference": 2.0, "total": 3.0})
        clock.advance(0.1)
    pipe.frames_dropped(4)
    pipe.error()
    pipe.record("decode", 0.004)
    snap = pipe.snapshot()
    assert snap["model_sha256"] == "abc"
    assert snap["frames"] == {"captured": 60, "processed": 60, "dropped": 4, "errors": 1}
    assert snap["fps"] == pytest.approx(10.0, rel=0.05)
    latency = snap["latency_ms"]
    assert isinstance(latency, dict)
    assert set(STAGES) <= set(latency)
    assert latency["inference"]["p99"] == 2.0 and latency["inference"]["count"] == 60
    assert latency["capture"]["count"] == 0
    assert latency["decode"]["p50"] == pytest.approx(4.0)


def test_registry_snapshot_is_json_ready() -> None:
    clock = FakeClock()
    registry = MetricsRegistry(clock=clock)
    registry.pipeline("default").frame_processed()
    assert registry.pipeline("default") is registry.pipeline("default")
    registry.counters.inc("published", 2)
    depth = [7]
    registry.set_gauge("outbox_depth", lambda: depth[0])
    registry.set_gauge("numpy_value", np.float32(1.5))
    registry.set_gauge("broken", lambda: 1 / 0)
    registry.set_gauge("nan", float("nan"))
    depth[0] = 9
    clock.advance(12.34)
    snap = registry.snapshot()
    text = json.dumps(snap, allow_nan=False)
    assert json.loads(text) == snap
    assert snap["uptime_s"] == pytest.approx(12.3)
    assert snap["gauges"] == {"outbox_depth": 9, "numpy_value": 1.5, "broken": None, "nan": None}
    assert snap["counters"] == {"published": 2}
    pipelines = snap["pipelines"]
    assert isinstance(pipelines, dict) and pipelines["default"]["frames"]["processed"] == 1
    system = snap["system"]
    assert isinstance(system, dict) and system["rss_bytes"] > 0


def test_registry_without_system_and_removal() -> None:
    registry = MetricsRegistry(include_system=False)
    registry.pipeline("a")
    registry.pipeline("b")
    registry.remove("a")
    assert registry.pipelines() == ["b"]
    assert "system" not in registry.snapshot()
