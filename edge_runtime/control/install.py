"""Putting a new model into service: load it beside the running one, check it can serve the
pipeline (same kind of input, same task), warm it up and health-check it (invokes succeed,
latency within the profile's budget), then swap it in between two frames."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from edge_runtime.bundles.manifest import Bundle
from edge_runtime.config import PipelineConfig
from edge_runtime.control.dispatcher import CommandRefused
from edge_runtime.model import LoadedModel, ModelError

log = logging.getLogger(__name__)
WARMUP_RUNS = 5


class Loader(Protocol):
    def resolve(self, path: Path, config: PipelineConfig) -> Bundle: ...

    def load(self, config: PipelineConfig, bundle: Bundle | None = None) -> LoadedModel: ...


class Serving(Protocol):
    """What installing needs of a pipeline."""

    name: str
    config: PipelineConfig
    previous: LoadedModel | None

    @property
    def model(self) -> LoadedModel | None: ...

    def swap_model(self, new: LoadedModel) -> LoadedModel | None: ...


class Installer:
    def __init__(self, loader: Loader, on_model_changed: Callable[[], None]) -> None:
        self._loader = loader
        self._changed = on_model_changed

    def install(self, pipeline: Serving, bundle: Bundle) -> dict[str, Any]:
        """Load ``bundle`` beside the running model, check and warm it up, then swap it in."""
        candidate = self.prepare(pipeline, bundle)
        result = self.put_in_service(pipeline, candidate)
        result["warmup_ms"] = candidate.extra.get("warmup_ms")
        return result

    def prepare(self, pipeline: Serving, bundle: Bundle) -> LoadedModel:
        """``bundle`` loaded (its golden self-test passed), checked against the pipeline and
        warmed up; not serving yet."""
        try:
            candidate = self._loader.load(pipeline.config, bundle)
        except ModelError as exc:
            raise CommandRefused(str(exc)) from None
        try:
            candidate.extra["warmup_ms"] = round(health_check(pipeline.model, candidate), 3)
        except CommandRefused:
            candidate.close()
            raise
        return candidate

    def put_in_service(self, pipeline: Serving, candidate: LoadedModel) -> dict[str, Any]:
        """Swap a prepared model in between two frames."""
        try:
            old = pipeline.swap_model(candidate)
        except Exception as exc:   # the first model of a waiting pipeline opens its source
            candidate.close()
            raise CommandRefused(f"the pipeline cannot serve it: {exc}") from None
        self._changed()
        log.info("pipeline %s now serves %s v%s (was %s)", pipeline.name, candidate.bundle.name,
                 candidate.bundle.version, f"v{old.bundle.version}" if old else "waiting")
        return {"pipeline": pipeline.name, "model": candidate.bundle.model_info,
                "previous": old.bundle.model_info if old else None,
                "golden": candidate.extra.get("golden")}

    def rollback(self, pipeline: Serving) -> dict[str, Any]:
        previous = pipeline.previous
        if previous is None:
            raise CommandRefused("no previous model to roll back to")
        current = pipeline.swap_model(previous)
        pipeline.previous = current
        self._changed()
        log.info("pipeline %s rolled back to %s v%s", pipeline.name, previous.bundle.name,
                 previous.bundle.version)
        return {"pipeline": pipeline.name, "model": previous.bundle.model_info,
                "previous": current.bundle.model_info if current else None}


def health_check(current: LoadedModel | None, candidate: LoadedModel) -> float:
    """The candidate's warm-up latency in ms; CommandRefused when it cannot serve here."""
    if current is not None:
        _fits(current, candidate)
    try:
        latency = candidate.warm_up(WARMUP_RUNS)
    except Exception as exc:
        raise CommandRefused(f"health check failed: the model does not run ({exc})") from None
    budget = (candidate.bundle.profile.get("budgets") or {}).get("max_latency_ms")
    if isinstance(budget, int | float) and budget > 0 and latency > budget:
        shown = f"{latency:.1f}" if latency >= 10 else f"{latency:.3g}"
        raise CommandRefused(f"health check failed: {shown} ms per frame is over the "
                             f"profile's {budget} ms budget")
    return latency


def _fits(current: LoadedModel, candidate: LoadedModel) -> None:
    if candidate.spec.is_image != current.spec.is_image:
        raise CommandRefused("the new model takes a different kind of input (image vs "
                             "sensor window) than this pipeline's source gives")
    if not candidate.spec.is_image and candidate.spec.shape != current.spec.shape:
        raise CommandRefused(f"the new model's input {list(candidate.spec.shape)} does not "
                             f"fit this pipeline's windows {list(current.spec.shape)}")
    if candidate.bundle.task != current.bundle.task:
        raise CommandRefused(f"the new model's task {candidate.bundle.task!r} differs from "
                             f"the pipeline's {current.bundle.task!r}")
