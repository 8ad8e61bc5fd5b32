"""The one owner of the MQTT connection.

:class:`MqttLink` connects in the background and keeps reconnecting with a jittered back-off,
keeps the retained status topic true (last will = offline), hands commands to the daemon, and
runs the sender that drains the durable outbox (see :mod:`edge_runtime.publish.sender`).
Connection problems are kept in plain words in ``last_error`` and logged once per change;
credentials never appear in logs or on the status topic.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_runtime import __version__
from edge_runtime.publish.client import Will, connect_options, make_client
from edge_runtime.publish.outbox import Outbox, OutboxItem
from edge_runtime.publish.payloads import StatusMessage
from edge_runtime.publish.reasons import (
    connect_failure_words,
    lost_words,
    refusal_words,
)
from edge_runtime.publish.sender import OutboxSender
from edge_runtime.publish.settings import MqttSettings, parse_mqtt_url
from edge_runtime.publish.topics import Topics
from edge_runtime.retry import backoff_delay

__all__ = ["MqttLink", "MqttSettings", "parse_mqtt_url"]

log = logging.getLogger(__name__)

DIRECT_INFLIGHT_SPARE = 20
STOP_PUBLISH_TIMEOUT_S = 2.0
_DRAIN_POLL_S = 0.02

P = ParamSpec("P")
CommandHandler = Callable[[str, bytes], None]
StatusExtra = Callable[[], dict[str, Any]]


def _guarded(callback: Callable[P, None]) -> Callable[P, None]:
    """Log what a paho callback raises instead of letting it end paho's network thread."""

    @functools.wraps(callback)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            callback(*args, **kwargs)
        except Exception:
            log.exception("MQTT %s failed", callback.__name__.strip("_").replace("_", " "))

    return guarded


class MqttLink:
    """Connection, status, commands and outbox draining for one device."""

    def __init__(
        self,
        settings: MqttSettings,
        topics: Topics,
        outbox: Outbox,
        on_command: CommandHandler | None = None,
        status_extra: StatusExtra | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self._outbox = outbox
        self._on_command = on_command
        self._status_extra = status_extra
        self._status_lock = threading.Lock()
        self._status: tuple[str, dict[str, Any]] = ("online", {})
        self._connected = False
        self._ever_connected = False
        self._stopping = False
        self._attempt = 0
        self._last_error: str | None = None
        self._failures = 0
        self._reconnects = 0
        self._direct_dropped = 0
        self._sender = OutboxSender(outbox, self._publish_item, settings.max_inflight)
        self._sender_thread: threading.Thread | None = None
        self._client = self._build_client()

    # Public API ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def counters(self) -> dict[str, int]:
        return {
            "published": self._sender.published,
            "acked": self._sender.acked,
            "rejected": self._sender.rejected,
            "inflight": self._sender.inflight,
            "reconnects": self._reconnects,
            "connect_failures": self._failures,
            "direct_dropped": self._direct_dropped,
        }

    def start(self) -> None:
        """Connect in the background; never raises for an unreachable or refusing broker."""
        if self._sender_thread is not None:
            raise RuntimeError("MQTT link already started")
        self._sender_thread = threading.Thread(
            target=self._sender.run, name="mqtt-outbox", daemon=True
        )
        self._sender_thread.start()
        s = self.settings
        self._client.connect_async(s.host, s.port, s.keepalive,
                                   **connect_options(s, s.clean_session))
        self._client.loop_start()

    def set_status(self, state: str, **extra: Any) -> None:
        """Publish the retained status now if connected; it is re-published on every connect."""
        StatusMessage.from_payload({**extra, "state": state})  # refuse bad input right away
        with self._status_lock:
            self._status = (state, dict(extra))
            if self._connected:
                self._publish_status()

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Publish directly, bypassing the outbox, after the results stored before it; dropped
        (and counted) when disconnected."""
        if not self._connected:
            self._direct_dropped += 1
            return
        try:
            self._sender.flush()
        except Exception:
            log.debug("could not publish the stored results first", exc_info=True)
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:
            log.warning("cannot publish to %r: %s", topic, exc)
            self._direct_dropped += 1
            return
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._direct_dropped += 1

    def wake(self) -> None:
        """The outbox has new messages; the sender decides which thread publishes them."""
        self._sender.wake()

    def stop(self, drain_timeout: float = 5.0,
             before_offline: Callable[[], object] | None = None) -> int:
        """Drain, call ``before_offline`` (a last message while still connected), publish the
        retained ``offline`` status, disconnect.

        Returns the number of messages left in the outbox (they are sent on the next start).
        """
        if self._sender_thread is None or self._stopping:
            return self._outbox.depth()
        self._drain(drain_timeout)
        self._sender.stop()
        self._sender_thread.join()
        if before_offline is not None:
            try:
                before_offline()
            except Exception:
                log.exception("the last message before going offline failed")
        self._stopping = True
        with self._status_lock:
            self._status = ("offline", {"reason": "stopped"})
            info = self._publish_status() if self._connected else None
        if info is not None:
            _wait_quietly(info, STOP_PUBLISH_TIMEOUT_S)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected = False
        return self._outbox.depth()

    # Building the client -------------------------------------------------------------------

    def _build_client(self) -> paho.Client:
        s = self.settings
        will = StatusMessage("offline", reason="connection lost", device=self.topics.device)
        client = make_client(s, s.client_id or f"edge-{self.topics.device}",
                             will=Will(self.topics.status, will.to_json()))
        client.max_inflight_messages_set(s.max_inflight + DIRECT_INFLIGHT_SPARE)
        client.max_queued_messages_set(0)
        # Callbacks guard themselves; this is the last line of defence for paho's thread.
        client.suppress_exceptions = True
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # paho callbacks (paho's network thread) ------------------------------------------------

    @_guarded
    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._failures += 1
            self._note_problem(refusal_words(reason.value, reason.getName()))
            return
        # Whatever paho still holds from the last connection is sent again from the outbox.
        client.drop_out_messages()
        if self._ever_connected:
            self._reconnects += 1
        self._ever_connected = True
        self._attempt = 0
        self._connected = True
        log.info("MQTT connected to %s", self.settings.address)
        self._last_error = None
        with self._status_lock:
            self._publish_status()
        client.subscribe(self.topics.cmd_filter, qos=1)
        self._sender.connection_up()

    @_guarded
    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError` block: the cause is the live exception.
        self._failures += 1
        self._note_problem(connect_failure_words(self.settings.address, sys.exc_info()[1]))
        self._schedule_retry()

    @_guarded
    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected
        self._connected = False
        self._sender.connection_down()
        if self._stopping:
            return
        if was_connected:
            told = reason.getName() if flags.is_disconnect_packet_from_server else None
            self._note_problem(lost_words(told))
        self._schedule_retry()

    @_guarded
    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._sender.acked_mid(mid, refused=reason.is_failure)

    @_guarded
    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        verb = self.topics.verb_of(message.topic)
        if verb is None or self._on_command is None:
            return
        try:
            self._on_command(verb, bytes(message.payload))
        except Exception:
            log.exception("command handler failed for %r", verb)

    # Helpers -------------------------------------------------------------------------------

    def _publish_item(self, item: OutboxItem) -> int | None:
        if not self._connected:
            return None
        info = self._client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
        return info.mid if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def _status_payload(self, state: str, extra: dict[str, Any]) -> bytes:
        merged: dict[str, Any] = {
            "device": self.topics.device,
            "version": __version__,
            "ts": round(time.time(), 3),
        }
        if self._status_extra is not None and state != "offline":
            merged.update(self._safe_status_extra())
        merged.update(extra)
        merged["state"] = state
        return StatusMessage.from_payload(merged).to_json()

    def _safe_status_extra(self) -> dict[str, Any]:
        assert self._status_extra is not None
        try:
            extra = dict(self._status_extra())
            StatusMessage.from_payload({**extra, "state": "online"})
            return extra
        except Exception:
            log.exception("status_extra failed; status sent without it")
            return {}

    def _publish_status(self) -> paho.MQTTMessageInfo:
        """Publish the remembered status; the caller holds ``_status_lock``."""
        state, extra = self._status
        try:
            payload = self._status_payload(state, extra)
        except ValueError as exc:
            log.error("status extras refused (%s); status sent without them", exc)
            payload = self._status_payload(state, {})
        return self._client.publish(self.topics.status, payload, qos=1, retain=True)

    def _note_problem(self, words: str) -> None:
        if words != self._last_error:
            address = self.settings.address
            where = "" if address in words else f"{address}: "
            log.warning("MQTT %s%s (retrying)", where, words)
        self._last_error = words

    def _schedule_retry(self) -> None:
        s = self.settings
        delay = backoff_delay(self._attempt, s.reconnect_min_s, s.reconnect_max_s)
        self._attempt += 1
        # paho types the delays as int but sleeps on them as float: sub-second waits work.
        self._client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]

    def _drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the outbox to empty, connected or not.

        A broker that is away (restarting, or just dropped the connection) may be back within
        the time left: paho keeps reconnecting meanwhile and the sender resends from the outbox.
        Only a link that never got through returns at once: nothing suggests a broker is there.
        """
        self._sender.drain()
        if not self._ever_connected:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._outbox.depth() == 0:
                return
            time.sleep(_DRAIN_POLL_S)


def _wait_quietly(info: paho.MQTTMessageInfo, timeout: float) -> None:
    try:
        info.wait_for_publish(timeout)
    except (RuntimeError, ValueError):
        pass  # not sent: the last will says offline instead
