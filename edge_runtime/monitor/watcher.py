"""One pipeline's watch over what it serves: the health monitor, a candidate model in the shadow of
the serving one, the watch window after a swap and the hard examples kept on disk.

Everything here runs on the pipeline thread, after each result (before the publish policy, so
the monitor sees every result). What only the command thread may do (promote or unload a
candidate, roll back after an alarm) is left for it: :attr:`Watcher.rollback_reason` and a
shadow run's ``decision``. Health and shadow reports leave through the ``publish`` callable the
daemon hands in; frames never do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.monitor.health import HealthMonitor, MonitorSettings
from edge_runtime.monitor.reference import Reference
from edge_runtime.monitor.samples import SampleKeeper
from edge_runtime.monitor.shadow import PromoteCriteria, ShadowStats

if TYPE_CHECKING:
    from edge_runtime.frames import Frame
    from edge_runtime.model import LoadedModel, Timings
    from edge_runtime.postprocess import Outcome

Publish = Callable[[str, dict[str, Any]], None]   # ("health" | "shadow", report)
SHADOW_REPORT_EVERY = 25   # compared frames between two shadow reports while running
SHADOW_REPORT_S = 5.0      # ... or seconds, whichever comes first


@dataclass
class ShadowRun:
    """A candidate loaded beside the serving model, compared on every ``every``-th frame."""

    candidate: LoadedModel
    criteria: PromoteCriteria
    auto: bool
    every: int = 1
    held: Path | None = None     # where its bundle waits on disk until promoted or unloaded
    stats: ShadowStats = field(default_factory=ShadowStats)
    decision: tuple[bool, str] | None = None
    frames: int = 0
    reported: float = 0.0

    def report(self, serving: LoadedModel, state: str, reason: str | None = None,
               ) -> dict[str, Any]:
        c = self.criteria
        return {**self.stats.summary(), "state": state,
                **({"reason": reason} if reason else {}),
                "candidate": self.candidate.bundle.model_info,
                "serving": serving.bundle.model_info,
                "promote": "auto" if self.auto else "manual", "every": self.every,
                "criteria": {"frames": c.frames, "agreement": c.agreement,
                             "max_latency_ms": c.max_latency_ms},
                "ts": round(time.time(), 3)}


class Watcher:
    """The pipeline's monitor, shadow run and post-swap watch."""

    def __init__(self, settings: MonitorSettings | None, publish: Publish, *,
                 watch_windows: int = 2, keeper: SampleKeeper | None = None) -> None:
        self.settings = settings
        self._publish = publish
        self.watch_windows = watch_windows
        self.keeper = keeper
        self.monitor: HealthMonitor | None = None
        self.last_health: dict[str, Any] | None = None
        self.last_shadow: dict[str, Any] | None = None
        self.shadow: ShadowRun | None = None
        self.lock = threading.Lock()   # held while the candidate runs; taken to remove it
        self.watch_left = 0            # windows still watched after a swap
        self.rollback_reason: str | None = None
        self._model_info: dict[str, str] = {}

    # ----- the model served -----------------------------------------------------------------

    def serve(self, model: LoadedModel, *, swapped: bool) -> None:
        """``model`` serves from now on; after a swap its first windows are watched."""
        self._model_info = model.bundle.model_info
        self.rollback_reason = None
        self.watch_left = self.watch_windows if swapped else 0
        if self.settings is None:
            return
        manifest = model.bundle.manifest
        reference = Reference.from_stats(manifest.reference_stats if manifest else None)
        budget = (model.bundle.profile.get("budgets") or {}).get("max_latency_ms")
        budget_ms = float(budget) if isinstance(budget, int | float) and budget > 0 else None
        if self.monitor is None:
            self.monitor = HealthMonitor(reference, model.bundle.labels, budget_ms=budget_ms,
                                         settings=self.settings)
        else:
            self.monitor.retarget(reference, model.bundle.labels, budget_ms)

    @property
    def verdict(self) -> str | None:
        return None if self.last_health is None else str(self.last_health["verdict"])

    # ----- each result ------------------------------------------------------------------------

    def observe(self, frame: Frame, model: LoadedModel, outcome: Outcome, t: Timings) -> None:
        if self.monitor is not None:
            detections = outcome.payload.get("detections")
            report = self.monitor.observe(
                latency_ms=t.preprocess + t.inference + t.postprocess,
                probabilities=outcome.probabilities,
                detections=len(detections) if isinstance(detections, list) else None,
                frame=frame.data if frame.data.ndim >= 2 and frame.data.dtype.kind == "u"
                else None)
            if report is not None:
                self._health(report)
        if self.keeper is not None and outcome.probabilities is not None:
            self.keeper.offer(frame, outcome, self._model_info)
        if self.shadow is not None:
            self._shadow_step(frame, model, outcome, t)

    def _health(self, report: dict[str, Any]) -> None:
        report["model"] = self._model_info
        if self.watch_left > 0:
            self.watch_left -= 1
            report["after_swap"] = True
            if report["verdict"] == "alarm" and self.rollback_reason is None:
                self.rollback_reason = "; ".join(report["reasons"])[:300]
        self.last_health = report
        self._publish("health", report)

    def _shadow_step(self, frame: Frame, model: LoadedModel, outcome: Outcome,
                     t: Timings) -> None:
        with self.lock:
            run = self.shadow
            if run is None or run.decision is not None:
                return
            run.frames += 1
            if run.frames % run.every:
                return
            try:
                theirs, ct = run.candidate.run(frame.data)
            except Exception:   # a candidate that fails on a frame counts against it, no more
                run.stats.errors += 1
                return
            run.stats.add((outcome.top_label, outcome.top_score, t.inference),
                          (theirs.top_label, theirs.top_score, ct.inference))
            if run.auto:
                run.decision = run.stats.decide(run.criteria)
            now = time.monotonic()
            if run.decision is None and run.stats.compared % SHADOW_REPORT_EVERY \
                    and now - run.reported < SHADOW_REPORT_S:
                return
            run.reported = now
            state = "running" if run.decision is None else "deciding"
            report = run.report(model, state)
        self.publish_shadow(report)

    def publish_shadow(self, report: dict[str, Any]) -> None:
        self.last_shadow = report
        self._publish("shadow", report)

    # ----- the shadow run, for the command thread ---------------------------------------------

    def begin_shadow(self, run: ShadowRun) -> ShadowRun | None:
        """Start comparing ``run``'s candidate; return a run it replaced (to be unloaded)."""
        with self.lock:
            old, self.shadow = self.shadow, run
        return old

    def take_shadow(self) -> ShadowRun | None:
        """Stop the shadow run and hand it over (the candidate is no longer run here)."""
        with self.lock:
            run, self.shadow = self.shadow, None
        return run

    def rolled_back(self, bad: dict[str, str], good: dict[str, str], reason: str) -> None:
        """The command thread rolled back after an alarm: say so on the health topic. The model
        now serving is not watched as after a swap (it served before; no ping-pong)."""
        self.watch_left = 0
        report = dict(self.last_health or {"schema": "edge-health/1", "verdict": "alarm"})
        report.update(rollback={"from": bad, "to": good, "reason": reason},
                      ts=round(time.time(), 3))
        self.last_health = report
        self._publish("health", report)

    def take_rollback(self) -> str | None:
        reason, self.rollback_reason = self.rollback_reason, None
        return reason

    def status(self) -> dict[str, Any]:
        """For status and metrics: the last verdict and the shadow run, if any."""
        health = self.last_health
        out: dict[str, Any] = {}
        if health is not None:
            out["health"] = {"verdict": health["verdict"], "reasons": health["reasons"],
                             "window": health["window"]["index"],
                             "estimated_accuracy": health["estimated_accuracy"],
                             "psi": health["psi"]}
        run = self.shadow
        if run is not None:
            out["shadow"] = {"candidate": run.candidate.bundle.model_info,
                             "compared": run.stats.compared,
                             "agreement": run.stats.summary()["agreement"]}
        if self.keeper is not None:
            out["samples"] = self.keeper.counts()
        return out


def monitor_settings(enabled: bool, **values: Any) -> MonitorSettings | None:
    return MonitorSettings(**values) if enabled else None
