"""The daemon: pipelines, the MQTT link, commands, metrics, status and the systemd handshake.

Lifecycle: everything is loaded and checked first (a bad bundle or config never reaches the
broker), then the link connects in the background, the pipelines start, and systemd hears
READY=1. SIGTERM/SIGINT stop capture, let the frame in flight finish, drain the outbox within a
timeout (what is left stays on disk for next time), publish ``offline`` and exit 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from edge_runtime.system.notify import Notifier
from edge_runtime.system.statelock import StateLock

from . import __version__
from .bundles.store import BundleStore
from .config import DaemonConfig, PipelineConfig
from .control.verbs import Control
from .metrics import MetricsRegistry
from .model import LoadedModel, ModelError, ModelLoader
from .monitor.health import MonitorSettings
from .monitor.samples import SampleKeeper
from .monitor.watcher import Watcher
from .pipeline import Pipeline
from .publish.mqtt import MqttLink
from .publish.outbox import Outbox
from .publish.payloads import encode
from .publish.topics import Topics
from .redact import redact

log = logging.getLogger(__name__)
TICK_S = 0.2
FINISH_DRAIN_S = 30.0


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.state_dir = config.resolved_state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Before anything reads or writes the state dir: a second daemon stops here.
        self.state_lock = StateLock(self.state_dir).acquire()
        try:
            self._build(config)
        except BaseException:
            self.state_lock.release()
            raise

    def _build(self, config: DaemonConfig) -> None:
        self.topics = Topics(config.device_id, config.mqtt.prefix)
        # A bad URL or an unreadable password file stops us before any work.
        mqtt_settings = config.mqtt.settings(config.device_id)
        self.registry = MetricsRegistry()
        self.notifier = Notifier()
        self._stop = threading.Event()
        self._status: tuple[str, str] = ("", "")
        self._described: list[tuple[object, ...]] = []  # threads and decoding, as status says
        self._pipeline_states: dict[str, tuple[str, str]] = {}
        self.loader = ModelLoader(self.state_dir, config.trusted_keys)
        store = BundleStore(self.state_dir, config.commands.bundle_roots, config.trusted_keys,
                            config.groups)
        store.drop(self.state_dir / "shadow")   # candidates of a previous run: never decided
        models = self._load_models(store)
        self.outbox = Outbox(self.state_dir / "outbox.sqlite", config.outbox.max_messages,
                             config.outbox.max_bytes, config.outbox.synchronous)
        self.pipelines: dict[str, Pipeline] = {}
        self.reports: dict[str, bytes] = {}   # the last health and shadow reports, retained
        for name, model in models.items():
            if model is not None:
                store.releases.record(model.bundle, name)
        self.warnings = self._trust_warnings()
        self.control = Control(self.pipelines, loader=self.loader, store=store,
                               reply=self._reply, on_model_changed=self.refresh_status,
                               metrics=self.publish_metrics, settings=config.commands,
                               allow_unsigned_deploy=config.allow_unsigned_deploy)
        self.link = MqttLink(mqtt_settings, self.topics, self.outbox,
                             on_command=self.control.dispatcher.submit,
                             status_extra=self._status_extra)
        for pc in config.pipelines:
            self.pipelines[pc.name] = Pipeline(
                pc, models[pc.name], device=config.device_id,
                result_topic=self.topics.result(pc.name), outbox=self.outbox,
                wake=self.link.wake, metrics=self.registry.pipeline(pc.name),
                on_state=self._pipeline_state, watcher=self._watcher(pc.name))
        self.registry.set_gauge("outbox_depth", self.outbox.depth)
        self.registry.set_gauge("outbox_bytes", self.outbox.size_bytes)
        self.registry.set_gauge("outbox_dropped", lambda: self.outbox.dropped)
        self.registry.set_gauge("mqtt_connected", lambda: self.link.connected)

    def _load_models(self, store: BundleStore) -> dict[str, LoadedModel | None]:
        """Each pipeline's model; None for one whose bundle is not there yet (a fresh install:
        it waits for ``deploy``, or serves what a deploy installed before a restart)."""
        models: dict[str, LoadedModel | None] = {}
        try:
            for pc in self.config.pipelines:
                models[pc.name] = self._load_model(pc, store)
        except ModelError:
            for m in models.values():
                if m is not None:
                    m.close()
            raise
        return models

    def _load_model(self, pc: PipelineConfig, store: BundleStore) -> LoadedModel | None:
        if pc.bundle is not None and (pc.bundle.exists() or pc.bundle.is_symlink()):
            return self.loader.load(pc)
        installed = store.remembered(pc.name)
        if installed is not None:
            log.info("pipeline %s: serving %s, installed here by a command", pc.name, installed)
            return self.loader.load(pc, self.loader.resolve(installed, pc))
        log.warning("pipeline %s: %s; waiting for a model from deploy", pc.name,
                    f"bundle {pc.bundle} is not there yet" if pc.bundle else "no bundle yet")
        return None

    def _watcher(self, name: str) -> Watcher:
        m, s = self.config.monitor, self.config.samples
        settings = None if not m.enabled else MonitorSettings(
            window=m.window, max_window_s=m.max_window_s,
            min_results=min(m.min_results, m.window), psi_warn=m.psi_warn,
            psi_alarm=m.psi_alarm, accuracy_warn_points=m.accuracy_warn_points,
            accuracy_alarm_points=m.accuracy_alarm_points,
            frozen_alarm_share=m.frozen_alarm_share, blank_alarm_share=m.blank_alarm_share)
        keeper = SampleKeeper(self.state_dir / "samples" / name, max_margin=s.max_margin,
                              max_count=s.max_count, max_bytes=s.max_bytes) if s.enabled else None

        def publish(kind: str, report: dict[str, Any]) -> None:
            topic = self.topics.pipeline_topic(name, kind)
            payload = encode(report)
            self.reports[topic] = payload
            self.link.publish(topic, payload, qos=1, retain=True)

        return Watcher(settings, publish, watch_windows=m.watch_windows, keeper=keeper)

    def _trust_warnings(self) -> list[str]:
        """What the operator should know about who may change the model; logged and in status."""
        if not self.config.allow_unsigned_deploy:
            return []
        if self.config.trusted_keys:
            log.warning("allow_unsigned_deploy is ignored: trusted_keys are set, so only signed "
                        "bundles are deployed")
            return []
        warning = ("allow_unsigned_deploy: unsigned bundles are accepted from deploy; anyone who "
                   "can publish on the broker can replace the model")
        log.warning("%s", warning)
        return [warning]

    def _reply(self, verb: str, result: dict[str, Any]) -> None:
        self.link.publish(self.topics.reply(verb), encode(result), qos=1)

    # ----- lifecycle --------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> int:
        self.link.set_status("online", reason="starting")
        self.link.start()
        self.control.dispatcher.start()
        for p in self.pipelines.values():
            p.start()
        self._update_status(force=True)
        self.notifier.ready(f"serving {len(self.pipelines)} pipeline(s)")
        log.info("serving %s as %s on %s", ", ".join(self.pipelines), self.config.device_id,
                 self.link.settings.address)
        finished = self._serve()
        failed = self._failed_pipelines() if finished else []  # before stopping ends the sources
        self.shutdown(drain_s=FINISH_DRAIN_S if finished else self.config.drain_timeout_s)
        if failed:
            # Non-zero so that a supervisor (systemd Restart=on-failure) starts the daemon again.
            log.error("exiting: pipeline(s) %s stopped on an error", ", ".join(failed))
            return 1
        return 0

    def _serve(self) -> bool:
        """Loop until asked to stop (False) or every pipeline's source has ended (True)."""
        next_metrics = time.monotonic() + self.config.metrics_interval_s
        was_connected = False
        while not self._stop.wait(TICK_S):
            connected = self.link.connected
            if connected and not was_connected:
                self._announce()
            was_connected = connected
            if all(p.done.is_set() for p in self.pipelines.values()):
                return True
            self._update_status()
            self._pet_watchdog()
            if time.monotonic() >= next_metrics:
                self.publish_metrics()
                next_metrics = time.monotonic() + self.config.metrics_interval_s
        return False

    def shutdown(self, drain_s: float) -> None:
        self.notifier.stopping()
        for p in self.pipelines.values():
            p.stop()
        for p in self.pipelines.values():
            p.join(timeout=10)
        self.control.dispatcher.stop()
        deadline = time.monotonic() + drain_s
        self._await_broker(deadline)
        # The final metrics go out after the drain, so they count what was delivered.
        left = self.link.stop(drain_timeout=max(0.0, deadline - time.monotonic()),
                              before_offline=self.publish_metrics)
        if left:
            log.warning("%d result(s) not yet acknowledged stay in the outbox for next time", left)
        self.outbox.close()
        for p in self.pipelines.values():
            run = p.watcher.take_shadow()
            for model in (p.model, run.candidate if run else None):
                if model is not None:
                    model.close()
            if p.watcher.keeper is not None:
                p.watcher.keeper.close()
        self.state_lock.release()

    def _await_broker(self, deadline: float) -> None:
        """Results are still owed: a broker that is away may come back within the drain time."""
        while not self.link.connected and self.outbox.depth() and time.monotonic() < deadline:
            time.sleep(TICK_S)

    def _announce(self) -> None:
        """The last health and shadow reports and Home Assistant discovery (opt-in), re-sent on
        every (re)connect; retained."""
        for topic, payload in list(self.reports.items()):
            self.link.publish(topic, payload, qos=1, retain=True)
        ha = self.config.homeassistant
        if not ha.enabled:
            return
        from edge_runtime.publish.homeassistant import discovery_messages

        for topic, payload in discovery_messages(self.topics, self.config.device_id,
                                                 list(self.pipelines), __version__, ha.prefix):
            self.link.publish(topic, payload, qos=1, retain=True)

    def _failed_pipelines(self) -> list[str]:
        """Pipelines that ended although their source had not and no frame limit was reached."""
        return [p.name for p in self.pipelines.values()
                if p.capture is not None and not p.capture.finished
                and (p.config.max_frames is None or p.results < p.config.max_frames)]

    def _pet_watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        now = time.monotonic()
        live = [p for p in self.pipelines.values() if not p.done.is_set()]
        if all(now - p.last_beat < interval for p in live):
            self.notifier.watchdog()

    # ----- status and metrics -----------------------------------------------------------------

    def _pipeline_state(self, name: str, state: str, reason: str) -> None:
        self._pipeline_states[name] = (state, reason)

    def _degraded_reasons(self) -> list[str]:
        reasons = [f"{name}: {reason}" for name, (state, reason) in self._pipeline_states.items()
                   if state == "degraded"]
        for p in self.pipelines.values():
            model = p.model
            if model is not None and model.backend.fell_back:
                reasons.append(f"{p.name}: delegate unavailable, running on the CPU")
            health = p.watcher.last_health
            if model is not None and health is not None and health["verdict"] == "alarm" \
                    and health.get("model") == model.bundle.model_info:
                reasons.append(f"{p.name}: health alarm: {'; '.join(health['reasons'])}")
        if self.outbox.problem:
            reasons.append(self.outbox.problem)
        if self.outbox.dropped:
            reasons.append(f"outbox full: {self.outbox.dropped} oldest result(s) dropped")
        return [redact(reason) for reason in reasons]

    def refresh_status(self) -> None:
        """Re-publish the retained status now: it names the model each pipeline serves."""
        self._update_status(force=True)

    def _update_status(self, force: bool = False) -> None:
        reasons = self._degraded_reasons()
        status = ("degraded", "; ".join(reasons)[:500]) if reasons else ("online", "")
        described = [p.described for p in self.pipelines.values()]
        if force or status != self._status or described != self._described:
            self._status, self._described = status, described
            self.link.set_status(status[0], reason=status[1] or None)
            self.notifier.status(f"{status[0]}{': ' + status[1] if status[1] else ''}")

    def _status_extra(self) -> dict[str, Any]:
        return {
            "device": self.config.device_id, "version": __version__,
            "groups": list(self.config.groups),
            **({"warnings": list(self.warnings)} if self.warnings else {}),
            "pipelines": {name: {"state": "waiting" if p.model is None else "serving",
                                 "model": p.model.bundle.model_info if p.model else None,
                                 "paused": p.paused,
                                 "source": redact(self.config_for(name).source),
                                 "threads": p.threads_status(),
                                 "decode": p.decode_status(), **p.watcher.status()}
                          for name, p in self.pipelines.items()},
        }

    def config_for(self, name: str) -> PipelineConfig:
        return self.pipelines[name].config

    def metrics_snapshot(self) -> dict[str, Any]:
        snap = self.registry.snapshot()
        snap["pipelines"] = {name: p.snapshot() for name, p in self.pipelines.items()}
        snap["outbox"] = {"depth": self.outbox.depth(), "bytes": self.outbox.size_bytes(),
                          "dropped": self.outbox.dropped}
        snap["mqtt"] = {"connected": self.link.connected, **self.link.counters}
        snap["commands"] = dict(self.control.dispatcher.counters)
        snap["device"] = self.config.device_id
        return snap

    def publish_metrics(self) -> dict[str, Any]:
        snap = self.metrics_snapshot()
        snap["ts"] = round(time.time(), 3)
        self.link.publish(self.topics.metrics, encode(snap), qos=0)
        return snap
