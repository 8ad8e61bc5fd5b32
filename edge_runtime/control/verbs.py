"""The command verbs (SPEC §6, §9): pause, resume, set, snapshot-metrics, reload, rollback, deploy,
promote, discard.

``Control`` is handed what the verbs act on and nothing more: the pipelines, a model loader, the
bundle store, a reply publisher, a "model changed" callback and a metrics snapshot. It never sees
the daemon.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from edge_runtime.bundles.manifest import Bundle, BundleError
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
from edge_runtime.control.install import Installer, Loader
from edge_runtime.control.shadowing import (
    SHADOW_KEYS,
    ShadowRequest,
    Shadows,
    Watched,
    shadow_request,
)
from edge_runtime.control.transfer import Abandoned, DeployAssembler
from edge_runtime.model import ModelError
from edge_runtime.publish.policy import PublishPolicy

log = logging.getLogger(__name__)
DEPLOY_MESSAGE_LIMIT = 4 * 2**20

Reply = Callable[[str, dict[str, Any]], None]


class Target(Watched, Protocol):
    """What the verbs need of a pipeline."""

    policy: PublishPolicy

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class Control:
    def __init__(self, pipelines: Mapping[str, Target], *, loader: Loader, store: BundleStore,
                 reply: Reply, on_model_changed: Callable[[], None],
                 metrics: Callable[[], dict[str, Any]], settings: CommandConfig,
                 allow_unsigned_deploy: bool = False) -> None:
        self._pipelines = pipelines
        self._loader = loader
        self._store = store
        self._metrics = metrics
        self._unsigned_deploy = allow_unsigned_deploy and not store.trusted_keys
        self._installer = Installer(loader, on_model_changed)
        self._shadows = Shadows(self._installer, store, on_model_changed)
        self.dispatcher = CommandDispatcher(reply, max_payload_bytes=settings.max_payload_bytes,
                                            rate_per_s=settings.rate_per_s, burst=settings.burst)
        for verb, handler in (("pause", self.pause), ("resume", self.resume), ("set", self.set),
                              ("snapshot-metrics", self.snapshot_metrics),
                              ("reload", self.reload), ("rollback", self.rollback),
                              ("deploy", self.deploy), ("promote", self.promote),
                              ("discard", self.discard)):
            self.dispatcher.register(verb, handler)
        self.dispatcher.unmetered.add("deploy")  # chunks; the assembler bounds them itself
        self.dispatcher.payload_limits["deploy"] = DEPLOY_MESSAGE_LIMIT
        self.assembler = DeployAssembler(settings.max_bundle_bytes,
                                         settings.deploy_idle_timeout_s)
        self.dispatcher.idle_tasks.append(self.expire_transfers)
        self.dispatcher.idle_tasks.append(self.settle)

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
        only_keys(args, {"bundle", "pipeline", *SHADOW_KEYS})
        raw = expect(args, "bundle", str, required=True)
        pipeline = self._one_target(args)
        shadow = shadow_request(args)
        try:
            path = self._store.check_path(raw)
            if path.name.endswith(PACK_SUFFIXES):
                with self._store.staged(path, "reload") as bundle:
                    return self._install(pipeline, bundle, keep=True, shadow=shadow)
            bundle = self._loader.resolve(path, pipeline.config)
            return self._install(pipeline, bundle, keep=False, shadow=shadow)
        except (BundleError, ModelError) as exc:
            raise CommandRefused(str(exc)) from None

    def rollback(self, args: dict[str, Any]) -> dict[str, Any]:
        only_keys(args, {"pipeline"})
        return self._installer.rollback(self._one_target(args))

    def promote(self, args: dict[str, Any]) -> dict[str, Any]:
        """Serve the candidate running in the shadow now, whatever the comparison says."""
        only_keys(args, {"pipeline"})
        try:
            return self._shadows.promote(self._one_target(args))
        except BundleError as exc:
            raise CommandRefused(str(exc)) from None

    def discard(self, args: dict[str, Any]) -> dict[str, Any]:
        """Unload the candidate running in the shadow."""
        only_keys(args, {"pipeline"})
        return self._shadows.discard(self._one_target(args))

    def settle(self) -> None:
        """Carry out what the pipelines decided (run by the dispatcher when it is idle)."""
        self._shadows.settle(self._pipelines.values())

    def deploy(self, args: dict[str, Any]) -> dict[str, Any]:
        """One chunk of a pushed bundle; installs it once complete (see :mod:`.transfer`)."""
        if not self._store.trusted_keys and not self._unsigned_deploy:
            raise CommandRefused("deploy refused: this device trusts no signing key (add "
                                 "trusted_keys, or set allow_unsigned_deploy: true)")
        started = time.monotonic()
        shadow = shadow_request(args)
        try:
            done = self.assembler.add(args, self.dispatcher.current_id)
        finally:
            self._answer_abandoned()
        if done is None:
            return NO_REPLY
        meta, archive = done
        pipeline = self._one_target({"pipeline": meta["pipeline"]} if meta["pipeline"] else {})
        try:
            with self._store.staged(archive, meta["id"]) as bundle:
                result = self._install(pipeline, bundle, keep=True, shadow=shadow)
        except BundleError as exc:
            raise CommandRefused(str(exc)) from None
        result["seconds"] = round(time.monotonic() - started, 3)
        return result

    def expire_transfers(self) -> None:
        """Answer the deploys that went quiet (run by the dispatcher when it is idle)."""
        self._answer([*self.assembler.take_abandoned(), *self.assembler.expire()])

    def _answer_abandoned(self) -> None:
        self._answer(self.assembler.take_abandoned())

    def _answer(self, abandoned: list[Abandoned]) -> None:
        for gone in abandoned:
            log.info("deploy dropped: %s", gone.error)
            self.dispatcher.reply_later("deploy", gone.reply_id, {"ok": False,
                                                                  "error": gone.error})

    def _install(self, pipeline: Target, bundle: Bundle, *, keep: bool,
                 shadow: ShadowRequest | None = None) -> dict[str, Any]:
        """Install a bundle a command brought: a signed one only if it is not an older release
        than this pipeline served and is meant for this device's groups. In shadow mode it
        runs beside the serving model until promoted or unloaded."""
        self._store.releases.admit(bundle, pipeline.name)
        if shadow is not None:
            return self._shadows.start(pipeline, bundle, shadow, staged=keep)
        result = self._installer.install(pipeline, bundle)
        if keep and bundle.root is not None:
            kept = self._store.keep(bundle.root)
            bundle.relocate(kept)
            self._store.remember(pipeline.name, kept)
        self._store.releases.record(bundle, pipeline.name)
        return result
