"""A pipeline whose outbox cannot be written skips results, says so, and keeps serving."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from edge_runtime.config import PipelineConfig
from edge_runtime.metrics import PipelineMetrics
from edge_runtime.model import open_model
from edge_runtime.pipeline import Pipeline
from edge_runtime.publish.outbox import Outbox


class RefusingOutbox:
    """A real outbox whose first ``refuse`` writes fail the way a full disk makes SQLite fail."""

    def __init__(self, real: Outbox, refuse: int) -> None:
        self.real, self.refuse, self.refused = real, refuse, 0

    def append(self, stream: str, topic: str, build: Callable[[int], bytes], qos: int = 1) -> int:
        if self.refused < self.refuse:
            self.refused += 1
            raise sqlite3.OperationalError("database or disk is full")
        return self.real.append(stream, topic, build, qos=qos)


def test_a_full_disk_skips_results_and_the_pipeline_recovers(digits: Path, digits_bundle: Path,
                                                             tmp_path: Path) -> None:
    source = digits / "images" / "val" / sorted(p.name for p in (digits / "images" / "val").iterdir())[0]
    frames = sorted(source.iterdir())
    assert len(frames) >= 5
    states: list[tuple[str, str]] = []
    metrics = PipelineMetrics("default")
    with Outbox(tmp_path / "o.db") as real:
        outbox = RefusingOutbox(real, refuse=2)
        pipeline = Pipeline(
            PipelineConfig(bundle=digits_bundle, source=str(source)), open_model(digits_bundle),
            device="dev", result_topic="edge/dev/default/result", outbox=outbox,  # type: ignore[arg-type]
            wake=lambda: None, metrics=metrics,
            on_state=lambda _name, state, reason: states.append((state, reason)),
        )
        pipeline.start()
        assert pipeline.done.wait(60)
        assert pipeline.results == len(frames) - 2 == real.depth()
        assert [item.seq for item in real.peek(100)] == list(range(1, len(frames) - 1))
    assert metrics.counters.get("unstored") == 2
    assert states[0] == ("degraded", "results cannot be stored: outbox: database or disk is full")
    assert states[1] == ("ok", "")
