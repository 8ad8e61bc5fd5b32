"""``edge-runtime bench``: invoke-only and end-to-end latency, fps and RSS for one bundle."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.system.sysinfo import peak_rss_bytes, rss_bytes

from .model import open_model


def _percentiles(samples: list[float]) -> dict[str, float]:
    p = np.percentile(np.asarray(samples) * 1e3, [50, 95, 99])
    return {"p50": round(float(p[0]), 3), "p95": round(float(p[1]), 3),
            "p99": round(float(p[2]), 3)}


def run_bench(path: Path, *, frames: int = 300, threads: int | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    model = open_model(path, threads=threads)
    load_s = time.perf_counter() - started
    try:
        spec = model.spec
        rng = np.random.default_rng(0)
        if spec.is_image:
            frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        else:
            frame = rng.standard_normal(spec.shape).astype(np.float32)
        model.warm_up(5)
        invoke = []
        for _ in range(frames):
            t = time.perf_counter()
            model.backend.invoke()
            invoke.append(time.perf_counter() - t)
        e2e = []
        t_all = time.perf_counter()
        for _ in range(frames):
            t = time.perf_counter()
            model.run(frame)
            e2e.append(time.perf_counter() - t)
        wall = time.perf_counter() - t_all
        return {
            "bundle": str(path), "model": model.bundle.model_info, "runtime": model.backend.runtime,
            "delegate": model.backend.delegate, "threads": model.backend.threads,
            "frames": frames, "load_s": round(load_s, 3),
            "invoke_ms": _percentiles(invoke), "end_to_end_ms": _percentiles(e2e),
            "fps": round(frames / wall, 1),
            "rss_mb": round(rss_bytes() / 2**20, 1), "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
            "frame": "640x480 synthetic" if spec.is_image else f"window {list(spec.shape)}",
        }
    finally:
        model.close()


def format_bench(d: dict[str, Any]) -> str:
    inv, e2e = d["invoke_ms"], d["end_to_end_ms"]
    return "\n".join([
        f"{d['model']['name']} v{d['model']['version']} on {d['runtime']} ({d['delegate']}, "
        f"{d['threads']} threads), {d['frames']} frames of {d['frame']}",
        f"  load        {d['load_s'] * 1e3:.0f} ms",
        f"  invoke      p50 {inv['p50']:.3f}  p95 {inv['p95']:.3f}  p99 {inv['p99']:.3f} ms",
        f"  end to end  p50 {e2e['p50']:.3f}  p95 {e2e['p95']:.3f}  p99 {e2e['p99']:.3f} ms "
        "(preprocess + invoke + postprocess)",
        f"  throughput  {d['fps']:.1f} fps",
        f"  memory      RSS {d['rss_mb']} MB (peak {d['peak_rss_mb']} MB)",
    ])
