"""MQTT connection settings and the ``mqtt://`` / ``mqtts://`` URL that describes them."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, cast, get_args
from urllib.parse import parse_qsl, unquote, urlsplit

from edge_runtime.errors import EdgeError
from edge_runtime.redact import redact

Protocol = Literal["3.1.1", "5"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
PASSWORD_ENV = "EDGE_MQTT_PASSWORD"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_QUERY_KEYS = ("client_id", "protocol", "keepalive", "qos")


class MqttSettingsError(EdgeError, ValueError):
    """A broker URL or setting that cannot be used; one line, never the password."""


@dataclass(repr=False)
class MqttSettings:
    """Where the broker is and how to talk to it. ``repr`` never shows the password.

    ``qos`` is the QoS results are queued with (``Outbox.append(..., qos=settings.qos)``);
    ``max_inflight`` bounds the outbox messages sent and not yet acknowledged; ``client_id``
    defaults to ``edge-<device>``, stable so that the broker keeps the persistent session.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: str | None = None
    protocol: Protocol = "3.1.1"
    keepalive: int = 30
    qos: int = 1
    max_inflight: int = 100
    clean_session: bool = False
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        self.protocol = cast(Protocol, str(self.protocol))
        _validate(self)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "password" and value is not None:
                value = "***"
            shown.append(f"{f.name}={value!r}")
        return f"MqttSettings({', '.join(shown)})"

    @property
    def address(self) -> str:
        """``host:port`` for messages (never credentials)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _validate(s: MqttSettings) -> None:
    checks = [
        (bool(s.host), "MQTT host must not be empty"),
        (1 <= s.port <= 65535, f"MQTT port must be 1-65535, got {s.port}"),
        (s.protocol in PROTOCOLS, f"MQTT protocol must be 3.1.1 or 5, got {s.protocol!r}"),
        (s.qos in (0, 1, 2), f"MQTT QoS must be 0, 1 or 2, got {s.qos}"),
        (s.keepalive >= 1, f"MQTT keepalive must be at least 1 s, got {s.keepalive}"),
        (s.max_inflight >= 1, f"MQTT max_inflight must be at least 1, got {s.max_inflight}"),
        (s.password is None or s.username is not None, "MQTT password given without a username"),
        (s.tls or s.ca_file is None, "an MQTT CA file needs TLS (an mqtts:// URL)"),
        (s.tls or s.cert_file is None, "an MQTT client certificate needs TLS (an mqtts:// URL)"),
        ((s.cert_file is None) == (s.key_file is None),
         "an MQTT client certificate and its key go together: give both or neither"),
        (s.reconnect_min_s > 0, "MQTT reconnect_min_s must be above 0"),
        (s.reconnect_max_s >= s.reconnect_min_s, "MQTT reconnect_max_s must be >= reconnect_min_s"),
    ]
    for ok, message in checks:
        if not ok:
            raise MqttSettingsError(message)


def parse_mqtt_url(url: str, **overrides: Any) -> MqttSettings:
    """Settings from ``mqtt://[user:pass@]host[:port]`` or ``mqtts://…`` plus overrides.

    Overrides are any :class:`MqttSettings` field, and ``password_file`` (a file holding the
    password). ``None`` overrides are ignored. The password is taken from, in order: the
    ``password`` override, ``password_file``, the URL, the ``EDGE_MQTT_PASSWORD`` environment
    variable. Errors are one line and never show the password.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    password_file = given.pop("password_file", None)
    known = {f.name for f in fields(MqttSettings)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise MqttSettingsError(f"unknown MQTT setting(s): {', '.join(unknown)}")
    settings = _from_url(url)
    password = given.pop("password", None)
    if password is None and password_file is not None:
        password = read_password_file(Path(password_file))
    if password is None:
        password = settings.password
    username = given.get("username", settings.username)
    if password is None and username is not None:
        password = os.environ.get(PASSWORD_ENV) or None
    try:
        return replace(settings, **given, password=password)
    except TypeError as exc:
        raise MqttSettingsError(f"bad MQTT setting: {exc}") from None


def read_password_file(path: Path) -> str:
    """The first line of ``path``, without its line ending."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise MqttSettingsError(f"cannot read MQTT password file {path}: {reason}") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise MqttSettingsError(f"MQTT password file {path} is empty")
    return lines[0]


def _from_url(url: str) -> MqttSettings:
    shown = redact(url)
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise MqttSettingsError(f"MQTT URL must start with mqtt:// or mqtts://, got {shown!r}")
    try:
        port = parts.port
    except ValueError:
        raise MqttSettingsError(f"MQTT URL has a bad port: {shown!r}") from None
    if not parts.hostname:
        raise MqttSettingsError(f"MQTT URL has no host: {shown!r}")
    if parts.path not in ("", "/") or parts.fragment:
        raise MqttSettingsError(f"MQTT URL must not have a path or fragment: {shown!r}")
    if port is None:
        port = DEFAULT_PORTS[scheme]
    options = _query_options(parts.query, shown)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return MqttSettings(
        host=parts.hostname,
        port=port,
        tls=scheme == "mqtts",
        username=username,
        password=password,
        **options,
    )


def _query_options(query: str, shown: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in _QUERY_KEYS:
            allowed = ", ".join(_QUERY_KEYS)
            raise MqttSettingsError(f"MQTT URL option {key!r} is not one of {allowed}: {shown!r}")
        if key in ("keepalive", "qos"):
            if not value.isdigit():
                raise MqttSettingsError(f"MQTT URL option {key} must be a whole number: {shown!r}")
            options[key] = int(value)
        else:
            options[key] = value
    return options
