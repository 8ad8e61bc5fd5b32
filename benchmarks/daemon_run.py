"""One run of the daemon as a child process against a broker, and what it showed: the results
at the subscriber, its CPU and memory, the final metrics message."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from assets import VIDEO_FRAMES, Assets, tool
from loops import LoopRate
from monitor import ChildRun, drop_page_cache, run_monitored
from subscriber import Arrival, Arrivals


@dataclass
class DaemonRun:
    child: ChildRun
    results: list[Arrival]
    metrics: dict[str, Any] | None = field(default=None)

    @property
    def first_result_s(self) -> float:
        return self.results[0].at - self.child.started

    @property
    def threads(self) -> dict[str, Any]:
        """What the daemon said about its interpreter threads in its final metrics."""
        pipeline = (self.metrics or {}).get("pipelines", {}).get("default", {})
        found = pipeline.get("threads")
        return found if isinstance(found, dict) else {}

    def steady_part(self) -> list[Arrival]:
        """The results after the first tenth (warm-up: first invokes, connection, caches) and,
        with threads chosen by measurement, after the choice was made."""
        ordered = sorted(self.results, key=lambda a: a.at)
        decided = self.threads.get("decided_after_frames") or 0
        tuned = [a for a in ordered if a.payload["seq"] > decided + 2]
        return tuned[max(5, len(tuned) // 10):]

    def steady(self) -> LoopRate:
        """Results per second at the broker and daemon CPU per result, in the steady part."""
        times = [a.at for a in self.steady_part()]
        if len(times) < 2 or times[-1] <= times[0]:
            return LoopRate(float("nan"), float("nan"))
        count = len(times) - 1
        cpu = self.child.cpu_between(times[0], times[-1])
        return LoopRate(count / (times[-1] - times[0]), cpu / count * 1e3)

    def beside_ms(self) -> float:
        """CPU per result spent beside the daemon in the steady part, on the same cores: the
        broker, the subscriber, anything else running."""
        times = [a.at for a in self.steady_part()]
        if len(times) < 2:
            return float("nan")
        machine = self.child.machine_cpu_between(times[0], times[-1])
        own = self.child.cpu_between(times[0], times[-1])
        return max(0.0, machine - own) / (len(times) - 1) * 1e3

    def overhead_ms(self) -> list[float]:
        """Per steady result: capture → arrival at the subscriber, less the invoke itself."""
        return [(a.at - a.payload["frame"]["captured_at"]) * 1e3
                - a.payload["timing_ms"]["inference"] for a in self.steady_part()]


def run_daemon(assets: Assets, broker: tuple[str, int], arrivals: Arrivals, *, frames: int,
               threads: int | None, fps: float | None = None, cold: bool = False,
               executable: str | None = None, extra: Sequence[str] = ()) -> DaemonRun:
    device = f"bench-{uuid.uuid4().hex[:6]}"
    host, port = broker
    with tempfile.TemporaryDirectory() as state:
        command = [
            executable or tool("edge-runtime"), "run", "--bundle", str(assets.bundle),
            "--source", str(assets.video), "--max-frames", str(frames),
            "--mqtt", f"mqtt://{host}:{port}", "--device-id", device, "--state-dir", state,
        ]
        if threads is not None:
            command += ["--threads", str(threads)]
        if fps is not None:
            command += ["--fps", f"{fps:g}"]
        if frames > VIDEO_FRAMES:
            command.append("--loop")
        command += list(extra)
        if cold:
            drop_page_cache()
        child = run_monitored(command)
    if child.exit_code != 0:
        raise SystemExit(f"edge-runtime exited with {child.exit_code}")
    results = arrivals.take(f"edge/{device}/default/result", frames)
    if len(results) < frames:
        raise SystemExit(f"only {len(results)} of {frames} results reached the broker")
    final = arrivals.take(f"edge/{device}/metrics", 1, timeout=2.0)
    return DaemonRun(child, results, final[-1].payload if final else None)
