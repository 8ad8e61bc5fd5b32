"""The command verbs (SPEC §6): pause, resume, set, snapshot-metrics, reload, rollback, deploy.

``Control`` is handed what the verbs act on and nothing more: the pipelines, a model loader, the
bundle store, a reply publisher, a "model changed" callback and a metrics snapshot. It never sees
the daemon.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from edge_runtime.bundles.manifest import BundleError
from edge_runtime.bundles.resolve import PACK_SUFFIXES
from edge_runtime.bundles.store import BundleStore
from edge_runtime.config import CommandConfig
from edge_runtime.control.dispatcher import (
    NO_REPLY,
    CommandDispatcher,
    CommandRefused,
    expect,
    only_keys,
)
from edge_runtime.control.install import Installer, Loader, Serving
from edge_runtime.control.transfer import DeployAssembler
from edge_runtime.model import ModelError
from edge_runtime.publish.policy import PublishPolicy

log = logging.getLogger(__name__)
DEPLOY_MESSAGE_LIMIT = 4 * 2**20

Reply = Callable[[str, dict[str, Any]], None]


class Target(Serving, Protocol):
    """What the verbs need of a pipeline."""

    policy: PublishPolicy

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class Control:
    def __init__(self, pipelines: Mapping[str, Target], *, loader: Loader, store: BundleStore,
                 reply: Reply, on_model_changed: Callable[[], None],
                 metrics: Callable[[], dict[str, Any]], settings: CommandConfig) -> None:
        self._pipelines = pipelines
        self._loader = loader
        self._store = store
        self._metrics = metrics
        self._installer = Installer(loader, on_model_changed)
        self.dispatcher = CommandDispatcher(reply, max_payload_bytes=settings.max_payload_bytes,
                                            rate_per_s=settings.rate_per_s, burst=settings.burst)
        for verb, handler in (("pause", self.pause), ("resume", self.resume), ("set", self.set),
                              ("snapshot-metrics", self.snapshot_metrics),
                              ("reload", self.reload), ("rollback", self.rollback),
                              ("deploy", self.deploy)):
            self.dispatcher.register(verb, handler)
        self.dispatcher.unmetered.add("deploy")  # chunks; the assembler bounds them itself
        self.dispatcher.payload_limits["deploy"] = DEPLOY_MESSAGE_LIMIT
        self.assembler = DeployAssembler(settings.max_bundle_bytes)

    # ----- targets ----------------------------------------------------------------------------

    def _targets(self, args: dict[str, Any]) -> list[Target]:
        name = expect(args, "pipeline", str)
        pipelines = self._pipelines
        if name is None:
            return list(pipelines.values())
        if name not in pipelines:
            raise CommandRefused(f"no pipeline {name[:64]!r}; known: {', '.join(pipelines)}")
        return [pipelines[name]]

    def _one_target(self, args: dict[str, Any]) -> Target:
        targets = self._targets(args)
        if len(targets) != 1:
            raise CommandRefused("several pipelines run here; say which with \"pipeline\"")
        return targets[0]

    # ----- verbs ------------------------------------------------------------------------------

    def pause(self, args: dict[str, Any]) -> dict[str, Any]:
        only_keys(args, {"pipeline"})
        targets = self._targets(args)
        for p in targets:
            p.pause()
        return {"paused": [p.name for p in targets]}

    def resume(self, args: dict[str, Any]) -> dict[str, Any]:
        only_keys(args, {"pipeline"})
        targets = self._targets(args)
        for p in targets:
            p.resume()
        return {"resumed": [p.name for p in targets]}

    def set(self, args: dict[str, Any]) -> dict[str, Any]:
        targets = self._targets(args)
        changes = {k: v for k, v in args.items() if k != "pipeline"}
        if not changes:
            raise CommandRefused("nothing to set; e.g. {\"min_score\": 0.6}")
        # validate on every target first so a refused change leaves all of them untouched
        for p in targets:
            try:
                type(p.policy)(p.policy.settings).update(changes)
            except ValueError as exc:
                raise CommandRefused(str(exc)) from None
        settings = {}
        for p in targets:
            settings[p.name] = p.policy.update(changes).as_dict()
        return {"settings": settings}

    def snapshot_metrics(self, args: dict[str, Any]) -> dict[str, Any]:
        only_keys(args, set())
        return {"metrics": self._metrics()}

    def reload(self, args: dict[str, Any]) -> dict[str, Any]:
        only_keys(args, {"bundle", "pipeline"})
        raw = expect(args, "bundle", str, required=True)
        pipeline = self._one_target(args)
        try:
            path = self._store.check_path(raw)
            if path.name.endswith(PACK_SUFFIXES):
                with self._store.staged(path, "reload") as bundle:
                    result = self._installer.install(pipeline, bundle)
                    self._keep(bundle.root)
                return result
            bundle = self._loader.resolve(path, pipeline.config)
        except (BundleError, ModelError) as exc:
            raise CommandRefused(str(exc)) from None
        return self._installer.install(pipeline, bundle)

    def rollback(self, args: dict[str, Any]) -> dict[str, Any]:
        only_keys(args, {"pipeline"})
        return self._installer.rollback(self._one_target(args))

    def deploy(self, args: dict[str, Any]) -> dict[str, Any]:
        """One chunk of a pushed bundle; installs it once complete (see :mod:`.transfer`)."""
        started = time.monotonic()
        done = self.assembler.add(args)
        if done is None:
            return NO_REPLY
        meta, archive = done
        pipeline = self._one_target({"pipeline": meta["pipeline"]} if meta["pipeline"] else {})
        try:
            with self._store.staged(archive, meta["id"]) as bundle:
                result = self._installer.install(pipeline, bundle)
                self._keep(bundle.root)
        except BundleError as exc:
            raise CommandRefused(str(exc)) from None
        result["seconds"] = round(time.monotonic() - started, 3)
        return result

    def _keep(self, root: Path | None) -> None:
        if root is not None:
            self._store.keep(root)
