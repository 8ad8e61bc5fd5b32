"""The command verbs (SPEC §6): pause, resume, set, snapshot-metrics, reload, rollback.

``reload`` loads the new model beside the running one, checks it can serve the pipeline (same
kind of input, same task), warms it up and health-checks it (invokes succeed, latency within the
profile's budget), then swaps it in between two frames. The old model stays for ``rollback``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .commands import NO_REPLY, CommandDispatcher, CommandRefused, expect, only_keys
from .deploy import DeployAssembler
from .model import LoadedModel, ModelError
from .publish.payloads import encode

if TYPE_CHECKING:
    from .daemon import Daemon
    from .pipeline import Pipeline

log = logging.getLogger(__name__)
WARMUP_RUNS = 5
DEPLOY_MESSAGE_LIMIT = 4 * 2**20


class Control:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        cfg = daemon.config.commands
        self.dispatcher = CommandDispatcher(self._reply, max_payload_bytes=cfg.max_payload_bytes,
                                            rate_per_s=cfg.rate_per_s, burst=cfg.burst)
        for verb, handler in (("pause", self.pause), ("resume", self.resume), ("set", self.set),
                              ("snapshot-metrics", self.snapshot_metrics),
                              ("reload", self.reload), ("rollback", self.rollback),
                              ("deploy", self.deploy)):
            self.dispatcher.register(verb, handler)
        self.dispatcher.unmetered.add("deploy")  # chunks; the assembler bounds them itself
        self.dispatcher.payload_limits["deploy"] = DEPLOY_MESSAGE_LIMIT
        self.assembler = DeployAssembler(daemon.config.commands.max_bundle_bytes)

    def _reply(self, verb: str, result: dict[str, Any]) -> None:
        self.daemon.link.publish(self.daemon.topics.reply(verb), encode(result), qos=1)

    # ----- targets ----------------------------------------------------------------------------

    def _targets(self, args: dict[str, Any]) -> list[Pipeline]:
        name = expect(args, "pipeline", str)
        pipelines = self.daemon.pipelines
        if name is None:
            return list(pipelines.values())
        if name not in pipelines:
            raise CommandRefused(f"no pipeline {name[:64]!r}; known: {', '.join(pipelines)}")
        return [pipelines[name]]

    def _one_target(self, args: dict[str, Any]) -> Pipeline:
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
        return {"metrics": self.daemon.publish_metrics()}

    def reload(self, args: dict[str, Any]) -> dict[str, Any]:
        only_keys(args, {"bundle", "pipeline"})
        raw = expect(args, "bundle", str, required=True)
        pipeline = self._one_target(args)
        path = self.check_bundle_path(raw)
        return self.install(pipeline, path)

    def rollback(self, args: dict[str, Any]) -> dict[str, Any]:
        only_keys(args, {"pipeline"})
        pipeline = self._one_target(args)
        previous = pipeline.previous
        if previous is None:
            raise CommandRefused("no previous model to roll back to")
        current = pipeline.swap_model(previous)
        pipeline.previous = current
        self.daemon.refresh_status()
        log.info("pipeline %s rolled back to %s v%s", pipeline.name, previous.bundle.name,
                 previous.bundle.version)
        return {"pipeline": pipeline.name, "model": previous.bundle.model_info,
                "previous": current.bundle.model_info}

    def deploy(self, args: dict[str, Any]) -> dict[str, Any]:
        """One chunk of a pushed bundle; installs it once complete (see :mod:`.deploy`)."""
        started = time.monotonic()
        done = self.assembler.add(args)
        if done is None:
            return NO_REPLY
        meta, archive = done
        pipeline = self._one_target({"pipeline": meta["pipeline"]} if meta["pipeline"] else {})
        incoming = self.daemon.state_dir / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        # Staged apart: a refused bundle must never replace the one on disk that a restart loads.
        staging = Path(tempfile.mkdtemp(prefix=f"{meta['id']}-", dir=incoming))
        try:
            bundle = self._unpack(archive, staging)
            result = self.install(pipeline, bundle)
            self._keep(bundle)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        result["seconds"] = round(time.monotonic() - started, 3)
        return result

    def _unpack(self, archive: bytes, staging: Path) -> Path:
        from .packing import PackError, unpack_bundle
        from .signing import SignatureError

        try:
            return unpack_bundle(archive, staging, trusted_keys=self.daemon.config.trusted_keys)
        except (PackError, SignatureError) as exc:
            raise CommandRefused(str(exc)) from None

    def _keep(self, staged: Path) -> None:
        """Move a bundle now serving into the state dir's bundles, replacing an older copy."""
        final = self.daemon.state_dir / "bundles" / staged.name
        parked = staged.with_name(f"{staged.name}.previous")  # inside staging: removed with it
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                os.rename(final, parked)
            os.rename(staged, final)
        except OSError as exc:
            if parked.exists() and not final.exists():
                with contextlib.suppress(OSError):
                    os.rename(parked, final)
            log.warning("bundle %s serves but could not be kept in %s: %s", staged.name,
                        final.parent, exc.strerror or exc)

    # ----- reload machinery -------------------------------------------------------------------

    def bundle_roots(self) -> list[Path]:
        d = self.daemon
        roots = [d.state_dir / "bundles", *d.config.commands.bundle_roots]
        roots += [pc.bundle.parent for pc in d.config.pipelines]
        return [Path(os.path.realpath(r)) for r in roots]

    def check_bundle_path(self, raw: str) -> Path:
        if not raw or len(raw) > 4096 or "\0" in raw:
            raise CommandRefused("'bundle' must be a path")
        path = Path(os.path.realpath(raw))
        roots = self.bundle_roots()
        if not any(path == r or path.is_relative_to(r) for r in roots):
            raise CommandRefused(f"bundle path {raw[:200]!r} is outside the places bundles may "
                                 "be loaded from")
        if not path.exists():
            raise CommandRefused(f"bundle {raw[:200]!r} does not exist")
        return path

    def install(self, pipeline: Pipeline, path: Path) -> dict[str, Any]:
        """Load ``path`` beside the running model, check and warm it up, then swap it in."""
        from .daemon import load_pipeline_model

        try:
            candidate = load_pipeline_model(pipeline.config, self.daemon.config, path)
        except ModelError as exc:
            raise CommandRefused(str(exc)) from None
        try:
            latency = self._health_check(pipeline.model, candidate)
        except CommandRefused:
            candidate.close()
            raise
        old = pipeline.swap_model(candidate)
        self.daemon.refresh_status()
        log.info("pipeline %s now serves %s v%s (was v%s)", pipeline.name, candidate.bundle.name,
                 candidate.bundle.version, old.bundle.version)
        return {"pipeline": pipeline.name, "model": candidate.bundle.model_info,
                "previous": old.bundle.model_info, "warmup_ms": round(latency, 3)}

    def _health_check(self, current: LoadedModel, candidate: LoadedModel) -> float:
        if candidate.spec.is_image != current.spec.is_image:
            raise CommandRefused("the new model takes a different kind of input (image vs "
                                 "sensor window) than this pipeline's source gives")
        if not candidate.spec.is_image and candidate.spec.shape != current.spec.shape:
            raise CommandRefused(f"the new model's input {list(candidate.spec.shape)} does not "
                                 f"fit this pipeline's windows {list(current.spec.shape)}")
        if candidate.bundle.task != current.bundle.task:
            raise CommandRefused(f"the new model's task {candidate.bundle.task!r} differs from "
                                 f"the pipeline's {current.bundle.task!r}")
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
