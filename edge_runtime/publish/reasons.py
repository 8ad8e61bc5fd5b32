"""Connection problems in plain words."""

from __future__ import annotations

import socket
import ssl

# MQTT 5 reason codes; paho maps MQTT 3.1.1 CONNACK codes onto the same values.
_REFUSALS = {
    0x84: "connection refused: unsupported MQTT protocol version",
    0x85: "connection refused: client id rejected",
    0x86: "bad username or password",
    0x87: "connection refused: not authorised",
    0x88: "connection refused: server unavailable",
    0x8A: "connection refused: client banned",
    0x8C: "connection refused: bad authentication method",
}


def refusal_words(code: int, name: str) -> str:
    """Why the broker said no to our CONNECT."""
    return _REFUSALS.get(code, f"connection refused: {name.lower()}")


def connect_failure_words(address: str, exc: BaseException | None) -> str:
    """Why no MQTT conversation could start with ``address`` (host:port)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate of {address} not trusted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {address} failed: {exc.reason or exc}"
    return f"broker unreachable: {address}: {_os_error_words(exc)}"


def lost_words(reason: str | None) -> str:
    """Why an established connection ended; ``reason`` when the broker told us."""
    return f"connection lost: {reason.lower()}" if reason else "connection lost"


def _os_error_words(exc: BaseException | None) -> str:
    if exc is None:
        return "connection failed"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return "host name not found"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
