"""MQTT URLs and settings, connection problems in plain words, and the reconnect back-off."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from edge_runtime.config import MqttConfig
from edge_runtime.errors import EdgeError
from edge_runtime.publish.reasons import (
    connect_failure_words,
    lost_words,
    refusal_words,
)
from edge_runtime.publish.settings import PASSWORD_ENV, MqttSettings, parse_mqtt_url
from edge_runtime.redact import redact
from edge_runtime.retry import backoff_delay
from edge_runtime.runconfig import check_config_file
from edge_runtime.yamlconfig import ConfigError


@pytest.fixture(autouse=True)
def no_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)


# URLs ------------------------------------------------------------------------------------------


def test_plain_url_with_defaults() -> None:
    s = parse_mqtt_url("mqtt://broker.local")
    assert (s.host, s.port, s.tls, s.username, s.password) == ("broker.local", 1883, False, None,
                                                                None)
    assert (s.qos, s.protocol, s.clean_session, s.max_inflight) == (1, "3.1.1", False, 100)


def test_tls_url_defaults_to_8883() -> None:
    s = parse_mqtt_url("mqtts://broker.local")
    assert (s.port, s.tls) == (8883, True)


def test_credentials_and_port() -> None:
    s = parse_mqtt_url("mqtt://edge:s3cr%40t@10.0.0.5:1884/")
    assert (s.host, s.port, s.username, s.password) == ("10.0.0.5", 1884, "edge", "s3cr@t")


def test_ipv6_host() -> None:
    s = parse_mqtt_url("mqtt://[::1]:1900")
    assert (s.host, s.port, s.address) == ("::1", 1900, "[::1]:1900")


def test_query_options() -> None:
    s = parse_mqtt_url("mqtt://h?client_id=cam-7&protocol=5&keepalive=15&qos=0")
    assert (s.client_id, s.protocol, s.keepalive, s.qos) == ("cam-7", "5", 15, 0)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://host", "must start with mqtt:// or mqtts://"),
        ("host:1883", "must start with mqtt://"),
        ("mqtt://", "has no host"),
        ("mqtt://host:abc", "bad port"),
        ("mqtt://host:70000", "bad port"),
        ("mqtt://host:0", "port must be 1-65535"),
        ("mqtt://host/topic", "path"),
        ("mqtt://host?colour=red", "option 'colour'"),
        ("mqtt://host?qos=high", "qos must be a whole number"),
        ("mqtt://host?qos=3", "QoS must be 0, 1 or 2"),
        ("mqtt://host?protocol=4", "protocol must be 3.1.1 or 5"),
        ("mqtt://:pw@host", "password given without a username"),
    ],
)
def test_bad_urls_raise_one_line(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_mqtt_url(url)
    assert "\n" not in str(info.value)


def test_errors_never_show_the_password() -> None:
    with pytest.raises(ValueError) as info:
        parse_mqtt_url("mqtt://edge:hunter2@host:notaport")
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)


def test_redact() -> None:
    assert redact("mqtts://u:p:q@h:1") == "mqtts://u:***@h:1"
    assert redact("mqtt://h:1883") == "mqtt://h:1883"
    assert redact("mqtt://user@h") == "mqtt://user@h"


# Overrides and password sources ----------------------------------------------------------------


def test_overrides_win_and_none_is_ignored(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    s = parse_mqtt_url("mqtts://h", ca_file=str(ca), keepalive=10, client_id=None, qos=2)
    assert (s.ca_file, s.keepalive, s.client_id, s.qos) == (ca, 10, None, 2)


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown MQTT setting.*colour"):
        parse_mqtt_url("mqtt://h", colour="red")


def test_password_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    assert parse_mqtt_url("mqtt://u@h").password == "from-env"
    assert parse_mqtt_url("mqtt://u:from-url@h").password == "from-url"
    assert parse_mqtt_url("mqtt://u:from-url@h", password_file=secret_file).password == "from-file"
    assert parse_mqtt_url("mqtt://u:x@h", password_file=secret_file,
                          password="given").password == "given"


def test_env_password_is_not_used_without_a_username(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    assert parse_mqtt_url("mqtt://h").password is None
    assert parse_mqtt_url("mqtt://h", username="u").password == "from-env"


def test_unreadable_password_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read MQTT password file .*missing"):
        parse_mqtt_url("mqtt://u@h", password_file=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        parse_mqtt_url("mqtt://u@h", password_file=empty)


# Settings --------------------------------------------------------------------------------------


def test_repr_hides_the_password() -> None:
    text = repr(parse_mqtt_url("mqtt://edge:hunter2@h"))
    assert "hunter2" not in text
    assert "password='***'" in text
    assert "username='edge'" in text
    assert "password=None" in repr(MqttSettings())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ca_file": Path("ca.pem")}, "CA file needs TLS"),
        ({"tls": True, "cert_file": Path("c.pem")}, "give both or neither"),
        ({"max_inflight": 0}, "max_inflight"),
        ({"keepalive": 0}, "keepalive"),
        ({"host": ""}, "host must not be empty"),
        ({"reconnect_min_s": 5.0, "reconnect_max_s": 1.0}, "reconnect_max_s"),
    ],
)
def test_inconsistent_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MqttSettings(**kwargs)  # type: ignore[arg-type]


# Plain words -----------------------------------------------------------------------------------


def test_refusals_in_plain_words() -> None:
    assert refusal_words(0x86, "Bad user name or password") == "bad username or password"
    assert refusal_words(0x87, "Not authorized") == "connection refused: not authorised"
    assert refusal_words(0x9F, "Connection rate exceeded") == (
        "connection refused: connection rate exceeded"
    )


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (ConnectionRefusedError(111, "Connection refused"),
         "broker unreachable: h:1883: connection refused"),
        (TimeoutError("timed out"), "broker unreachable: h:1883: timed out"),
        (socket.gaierror(-2, "Name or service not known"),
         "broker unreachable: h:1883: host name not found"),
        (OSError(113, "No route to host"), "broker unreachable: h:1883: no route to host"),
        (None, "broker unreachable: h:1883: connection failed"),
    ],
)
def test_connect_failures_in_plain_words(exc: BaseException | None, words: str) -> None:
    assert connect_failure_words("h:1883", exc) == words


def test_tls_failures_in_plain_words() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "self-signed certificate"
    assert connect_failure_words("h:8883", verify) == (
        "TLS certificate of h:8883 not trusted: self-signed certificate"
    )


def test_lost_connection_words() -> None:
    assert lost_words(None) == "connection lost"
    assert lost_words("Session taken over") == "connection lost: session taken over"


# Back-off --------------------------------------------------------------------------------------


def test_backoff_doubles_from_base_to_cap() -> None:
    middle = [backoff_delay(n, 0.5, 30.0, rand=lambda: 0.5) for n in range(10)]
    assert middle == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_backoff_jitter_stays_within_bounds() -> None:
    low = [backoff_delay(n, 0.5, 30.0, rand=lambda: 0.0) for n in range(12)]
    high = [backoff_delay(n, 0.5, 30.0, rand=lambda: 0.999) for n in range(12)]
    assert all(0.5 <= d <= 30.0 for d in low + high)
    assert low[3] < 4.0 < high[3]
    assert backoff_delay(10_000, 0.5, 30.0) <= 30.0


def test_url_errors_are_edge_errors_the_clis_print_in_one_line() -> None:
    with pytest.raises(EdgeError, match="bad port"):
        parse_mqtt_url("mqtt://edge:hunter2@host:notaport")


def test_check_config_reports_a_bad_broker_url_without_its_password(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("mqtt:\n  url: mqtt://edge:hunter2@broker:notaport\n"
                      "pipelines:\n  - bundle: b\n    source: s\n")
    with pytest.raises(ConfigError, match="mqtt: MQTT URL has a bad port") as info:
        check_config_file(config)
    assert "hunter2" not in str(info.value)


def test_the_password_file_is_read_for_the_daemon(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    mqtt = MqttConfig(url="mqtt://edge@broker", password_file=secret)
    assert mqtt.settings("pi-1").password == "s3cret"
    secret.unlink()
    with pytest.raises(EdgeError, match="cannot read MQTT password file"):
        mqtt.settings("pi-1")
