"""The MQTT connection flags every command line takes (``run``, ``watch``, ``deploy``) and the
settings they make: the same names, the same help, the same password sources everywhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from edge_runtime.publish.settings import PASSWORD_ENV, MqttSettings, parse_mqtt_url

F = TypeVar("F", bound=Callable[..., Any])

URL_HELP = (f"mqtt://[user@]host[:port], or mqtts://… for TLS. Give the password with "
            f"--mqtt-password-file or ${PASSWORD_ENV}, not in the URL (ps shows it there).")
FLAG_KEYS = {"mqtt_ca": "ca_file", "mqtt_cert": "cert_file", "mqtt_key": "key_file",
             "mqtt_password_file": "password_file"}


def mqtt_options(*, default_url: str | None = None, required: bool = False) -> Callable[[F], F]:
    """``--mqtt`` (as ``mqtt_url``), ``--mqtt-ca``, ``--mqtt-cert``, ``--mqtt-key`` and
    ``--mqtt-password-file`` on a click command."""
    path = click.Path(path_type=Path)
    options = [
        click.option("--mqtt", "mqtt_url", default=default_url, required=required,
                     show_default=default_url is not None, help=URL_HELP),
        click.option("--mqtt-ca", type=path, help="CA certificate that signed the broker's."),
        click.option("--mqtt-cert", type=path, help="Client certificate (mqtts://)."),
        click.option("--mqtt-key", type=path, help="Key of the client certificate."),
        click.option("--mqtt-password-file", type=path,
                     help=f"File whose first line is the MQTT password (or set ${PASSWORD_ENV})."),
    ]

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def settings_from_flags(url: str, flags: dict[str, Any], **overrides: Any) -> MqttSettings:
    """Settings from ``--mqtt`` and the flags :func:`mqtt_options` added (``flags`` may hold
    others too); one-line :class:`~edge_runtime.publish.settings.MqttSettingsError` if bad."""
    warn_if_password_in_url(url)
    given = {key: flags.get(flag) for flag, key in FLAG_KEYS.items()}
    return parse_mqtt_url(url, **given, **overrides)


def warn_if_password_in_url(url: str | None) -> None:
    """A password on the command line is readable by every user of the machine (``ps``)."""
    try:
        has_password = bool(url) and urlsplit(str(url)).password is not None
    except ValueError:
        return  # the URL's own error comes when it is parsed
    if has_password:
        click.echo(f"warning: the password in --mqtt is visible to every user of this machine "
                   f"(ps); use --mqtt-password-file or ${PASSWORD_ENV}", err=True)
