"""The one factory of paho clients: the daemon's link, ``edge-runtime watch`` and
``edge-convert deploy`` all connect the same way.

:func:`make_client` applies everything :class:`MqttSettings` says: client id, protocol version,
session, username and password, TLS with a CA and a client certificate, and a last will when the
caller has one. :func:`connect` is the blocking connect of the command-line tools: it waits for
the broker's answer and turns every way of failing into one line (never the password).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_runtime.errors import EdgeError
from edge_runtime.publish.reasons import connect_failure_words, refusal_words
from edge_runtime.publish.settings import MqttSettings, MqttSettingsError

SESSION_EXPIRY_S = 7 * 24 * 3600
CONNECT_TIMEOUT_S = 10.0


class MqttConnectError(EdgeError):
    """The broker could not be reached or refused us; one line in plain words."""


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for us when the connection dies (retained, QoS 1)."""

    topic: str
    payload: bytes


def make_client(settings: MqttSettings, client_id: str, *, clean: bool | None = None,
                will: Will | None = None) -> paho.Client:
    """A paho client for ``settings``; ``clean`` overrides ``settings.clean_session``.

    Raises :class:`MqttSettingsError` when a TLS file is missing or cannot be used.
    """
    v5 = settings.protocol == "5"
    clean = settings.clean_session if clean is None else clean
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=None if v5 else clean,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
    )
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        _configure_tls(client, settings)
    if will is not None:
        client.will_set(will.topic, will.payload, qos=1, retain=True)
    return client


def connect_options(settings: MqttSettings, clean: bool) -> dict[str, Any]:
    """What ``connect``/``connect_async`` need besides host, port and keep-alive: MQTT 5 puts the
    session choice there instead of in the client."""
    if settings.protocol != "5":
        return {}
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0 if clean else SESSION_EXPIRY_S
    return {"clean_start": clean, "properties": props}


def connect(client: paho.Client, settings: MqttSettings, *, clean: bool = True,
            on_connect: Callable[[paho.Client], None] | None = None,
            timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Connect (a clean session unless told otherwise, as :func:`make_client` was), start the
    network loop and wait until the broker accepted us.

    ``on_connect(client)`` runs on every accepted connection (the first and each reconnect), the
    place to subscribe. Raises :class:`MqttConnectError` (the loop stopped) when the broker is
    unreachable, the TLS handshake fails, or the broker refuses or drops us before accepting.
    """
    answered = threading.Event()
    problem: list[str] = []

    def connected(c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            problem.append(refusal_words(reason.value, reason.getName()))
        elif on_connect is not None:
            on_connect(c)
        answered.set()

    def disconnected(_c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if not answered.is_set():
            problem.append(f"the broker at {settings.address} closed the connection before "
                           f"accepting it ({reason.getName().lower()}); does it want a client "
                           "certificate or other credentials?")
            answered.set()

    client.on_connect = connected
    client.on_disconnect = disconnected
    try:
        client.connect(settings.host, settings.port, settings.keepalive,
                       **connect_options(settings, clean))
    except (OSError, ValueError) as exc:
        raise MqttConnectError(connect_failure_words(settings.address, exc)) from None
    client.loop_start()
    if not answered.wait(timeout):
        problem.append(f"no answer from the broker at {settings.address} within {timeout:.0f} s")
    if problem:
        client.loop_stop()
        client.disconnect()
        raise MqttConnectError(problem[0])


def _configure_tls(client: paho.Client, s: MqttSettings) -> None:
    for what, path in (("CA", s.ca_file), ("certificate", s.cert_file), ("key", s.key_file)):
        if path is not None and not path.is_file():
            raise MqttSettingsError(f"MQTT TLS {what} file {path} does not exist")
    try:
        client.tls_set(
            ca_certs=str(s.ca_file) if s.ca_file else None,
            certfile=str(s.cert_file) if s.cert_file else None,
            keyfile=str(s.key_file) if s.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise MqttSettingsError(f"MQTT TLS files cannot be used: {reason}") from None
