"""Helpers shared by the benchmark scripts: timing a backend, measuring import cost, a
throw-away Mosquitto.

Numbers from a workstation say little about a board (int8 is often slower than float32 under
XNNPACK on x86 without VNNI); report them as measured where they were measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends import Backend, TensorInfo, load_backend
from edge_runtime.metrics import LatencyStats
from edge_runtime.system.sysinfo import machine_description, peak_rss_bytes

# The tests' Mosquitto and daemon helpers (``tests/support``) serve the benchmarks too.
TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS) not in sys.path:
    sys.path.append(str(TESTS))

_IMPORT_PROBE = """
import json, resource, sys, time
start = time.perf_counter()
for name in sys.argv[1:]:
    __import__(name)
seconds = time.perf_counter() - start
rss = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
print(json.dumps({"seconds": seconds, "rss_bytes": rss}))
"""


def random_input(info: TensorInfo, rng: np.random.Generator) -> np.ndarray:
    """A random array of ``info``'s shape and dtype, covering the dtype's range."""
    dtype = np.dtype(info.dtype)
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        return rng.integers(limits.min, limits.max, info.shape, dtype=dtype, endpoint=True)
    return rng.random(info.shape, dtype=np.float32).astype(dtype)


def time_backend(backend: Backend, frames: int = 200, warmup: int = 20,
                 seed: int = 0) -> dict[str, Any]:
    """Invoke latency of ``backend`` on random inputs (fill + invoke + read outputs)."""
    rng = np.random.default_rng(seed)
    inputs = [random_input(info, rng) for info in backend.inputs]
    stats = LatencyStats(capacity=max(1, frames))
    for i in range(warmup + frames):
        start = time.perf_counter()
        for index, array in enumerate(inputs):
            backend.set_input(array, index)
        backend.invoke()
        backend.get_outputs()
        if i >= warmup:
            stats.record(time.perf_counter() - start)
    return {"runtime": backend.runtime, "delegate": backend.delegate,
            "threads": backend.threads, "latency_ms": stats.summary()}


def bench_model(model: Path, threads: list[int], frames: int = 200) -> dict[str, Any]:
    """Latency per thread count for one model, with the machine it ran on."""
    runs = []
    for count in threads:
        with load_backend(model, threads=count) as backend:
            runs.append(time_backend(backend, frames))
    return {"model": str(model), "machine": machine_description(), "runs": runs,
            "peak_rss_bytes": peak_rss_bytes()}


def import_cost(*modules: str) -> dict[str, float]:
    """Seconds and resident bytes to import ``modules`` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, *modules],
                          capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def mosquitto() -> Iterator[tuple[str, int]]:
    """A throw-away Mosquitto on a free loopback port: (host, port)."""
    from support.mosquitto import Mosquitto, mosquitto_available

    if not mosquitto_available():
        raise SystemExit("Mosquitto is not installed (/usr/sbin/mosquitto)")
    with tempfile.TemporaryDirectory() as work, Mosquitto(Path(work)) as server:
        yield server.host, server.port
