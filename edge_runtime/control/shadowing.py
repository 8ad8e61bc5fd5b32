"""A candidate model in the shadow of the serving one (``reload``/``deploy`` with
``"mode": "shadow"``), its promotion (``promote``, or by itself with ``"promote": "auto"``), its
unloading (``discard``, or a refusal by the criteria), and the roll-back after a swap when the
monitor raises an alarm in the watch window.

The pipeline thread compares and decides (:mod:`edge_runtime.monitor.watcher`); everything that
changes what serves or what is kept on disk happens here, on the command thread: on a command,
or in :meth:`Shadows.settle`, which the dispatcher runs when it is idle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from edge_runtime.bundles.manifest import Bundle, BundleError
from edge_runtime.bundles.store import BundleStore
from edge_runtime.control.dispatcher import CommandRefused, expect
from edge_runtime.control.install import Installer, Serving
from edge_runtime.monitor.shadow import PromoteCriteria
from edge_runtime.monitor.watcher import ShadowRun, Watcher

log = logging.getLogger(__name__)
SHADOW_KEYS = frozenset({"mode", "promote", "criteria", "every"})
DEFAULT_EVERY = 2


class Watched(Serving, Protocol):
    watcher: Watcher


@dataclass(frozen=True)
class ShadowRequest:
    criteria: PromoteCriteria
    auto: bool
    every: int


def shadow_request(args: dict[str, Any]) -> ShadowRequest | None:
    """What a ``reload``/``deploy`` asks for: None to serve at once, else a shadow run."""
    mode = expect(args, "mode", str) or "serve"
    if mode not in ("serve", "shadow"):
        raise CommandRefused(f"'mode' must be serve or shadow, got {mode[:20]!r}")
    promote = expect(args, "promote", str)
    criteria = expect(args, "criteria", dict)
    every = expect(args, "every", int)
    if mode == "serve":
        if promote is not None or criteria is not None or every is not None:
            raise CommandRefused("'promote', 'criteria' and 'every' go with \"mode\": \"shadow\"")
        return None
    if promote not in (None, "auto", "manual"):
        raise CommandRefused(f"'promote' must be auto or manual, got {str(promote)[:20]!r}")
    if every is not None and not 1 <= every <= 1000:
        raise CommandRefused("'every' must be a whole number in [1, 1000]")
    try:
        parsed = PromoteCriteria.from_args(criteria or {})
    except ValueError as exc:
        raise CommandRefused(str(exc)) from None
    return ShadowRequest(parsed, promote == "auto", every or DEFAULT_EVERY)


class Shadows:
    def __init__(self, installer: Installer, store: BundleStore,
                 changed: Callable[[], None]) -> None:
        self._installer = installer
        self._store = store
        self._changed = changed

    def start(self, pipeline: Watched, bundle: Bundle, request: ShadowRequest, *,
              staged: bool) -> dict[str, Any]:
        """Load ``bundle`` beside the serving model and start comparing."""
        serving = pipeline.model
        if serving is None:
            raise CommandRefused(f"pipeline {pipeline.name} serves no model yet: nothing to "
                                 "compare a candidate with (deploy without shadow)")
        held = None
        if staged and bundle.root is not None:
            held = self._store.hold(bundle.root, pipeline.name)
            bundle.relocate(held)
        try:
            candidate = self._installer.prepare(pipeline, bundle)
        except CommandRefused:
            if held is not None:
                self._store.drop(held.parent)
            raise
        run = ShadowRun(candidate, request.criteria, request.auto, request.every, held)
        replaced = pipeline.watcher.begin_shadow(run)
        if replaced is not None:
            self._unload(pipeline, replaced, "discarded", "replaced by a newer candidate")
        pipeline.watcher.publish_shadow(run.report(serving, "running"))
        self._changed()
        log.info("pipeline %s: %s v%s runs in the shadow of v%s (every %d frame(s), promote %s)",
                 pipeline.name, bundle.name, bundle.version, serving.bundle.version,
                 request.every, "auto" if request.auto else "manual")
        return {"pipeline": pipeline.name, "mode": "shadow", "model": serving.bundle.model_info,
                "candidate": candidate.bundle.model_info,
                "promote": "auto" if request.auto else "manual", "every": request.every,
                "criteria": run.report(serving, "running")["criteria"],
                "golden": candidate.extra.get("golden"),
                "warmup_ms": candidate.extra.get("warmup_ms")}

    def promote(self, pipeline: Watched, why: str = "promoted by command") -> dict[str, Any]:
        run = pipeline.watcher.take_shadow()
        if run is None:
            raise CommandRefused(f"no candidate runs in the shadow of pipeline {pipeline.name}")
        serving = pipeline.model
        assert serving is not None
        report = run.report(serving, "promoted", why)
        try:
            result = self._installer.put_in_service(pipeline, run.candidate)
        except CommandRefused as exc:   # the candidate is closed; its files are not needed
            if run.held is not None:
                self._store.drop(run.held.parent)
            pipeline.watcher.publish_shadow(run.report(serving, "discarded", str(exc)))
            raise
        bundle = run.candidate.bundle
        if run.held is not None:
            kept = self._store.keep(run.held)
            if kept != run.held:
                bundle.relocate(kept)
                self._store.remember(pipeline.name, kept)
                self._store.drop(run.held.parent)
        self._store.releases.record(bundle, pipeline.name)
        pipeline.watcher.publish_shadow(report)
        log.info("pipeline %s: candidate v%s promoted: %s", pipeline.name, bundle.version, why)
        return {**result, "reason": why, "agreement": report["agreement"],
                "compared": report["compared"]}

    def discard(self, pipeline: Watched, why: str = "discarded by command",
                state: str = "discarded") -> dict[str, Any]:
        run = pipeline.watcher.take_shadow()
        if run is None:
            raise CommandRefused(f"no candidate runs in the shadow of pipeline {pipeline.name}")
        report = self._unload(pipeline, run, state, why)
        return {"pipeline": pipeline.name, "candidate": report["candidate"], "reason": why,
                "agreement": report["agreement"], "compared": report["compared"]}

    def _unload(self, pipeline: Watched, run: ShadowRun, state: str, why: str,
                ) -> dict[str, Any]:
        serving = pipeline.model
        report = run.report(serving, state, why) if serving else {}
        run.candidate.close()
        if run.held is not None:
            self._store.drop(run.held.parent)
        if report:
            pipeline.watcher.publish_shadow(report)
        self._changed()
        log.warning("pipeline %s: candidate v%s unloaded: %s", pipeline.name,
                    run.candidate.bundle.version, why)
        return report

    def settle(self, pipelines: Iterable[Watched]) -> None:
        """Act on what the pipelines decided: a shadow run's verdict, a roll-back after an
        alarm in the watch window."""
        for p in pipelines:
            run = p.watcher.shadow
            if run is not None and run.decision is not None:
                promote, why = run.decision
                try:
                    if promote:
                        self.promote(p, f"auto: {why}")
                    else:
                        self.discard(p, f"auto: {why}", state="refused")
                except (CommandRefused, BundleError) as exc:
                    log.error("pipeline %s: the shadow decision could not be carried out: %s",
                              p.name, exc)
            reason = p.watcher.take_rollback()
            if reason is not None:
                self._roll_back(p, reason)

    def _roll_back(self, pipeline: Watched, reason: str) -> None:
        bad = pipeline.model
        if pipeline.previous is None or bad is None:
            log.warning("pipeline %s: health alarm after a swap (%s), but there is no previous "
                        "model to roll back to", pipeline.name, reason)
            return
        result = self._installer.rollback(pipeline)
        log.warning("pipeline %s: rolled back from v%s to v%s on a health alarm: %s",
                    pipeline.name, bad.bundle.version, result["model"]["version"], reason)
        pipeline.watcher.rolled_back(bad.bundle.model_info, result["model"], reason)

