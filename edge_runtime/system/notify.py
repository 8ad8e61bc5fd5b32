"""The systemd notify protocol (``sd_notify``) without libsystemd.

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket) to a
``Type=notify`` service, and ``WATCHDOG_USEC`` when ``WatchdogSec=`` is set. Each message is one
datagram of ``KEY=value`` lines. Outside systemd every method is a no-op, and a failing socket
never takes the daemon down: it is logged once and then ignored.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Tells systemd the daemon is ready, alive, what it is doing, and that it is stopping."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.enabled: bool = self._address is not None
        self.watchdog_interval: float | None = _watchdog_interval(env) if self.enabled else None
        self._clock = clock
        self._last_watchdog: float | None = None
        self._socket: socket.socket | None = None
        self._failed = False
        self._lock = threading.Lock()

    def ready(self, status: str | None = None) -> None:
        """Startup finished: systemd moves the unit to active (and starts counting the watchdog)."""
        lines = ["READY=1"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        self.send("\n".join(lines))

    def watchdog(self) -> None:
        """Keep-alive ping; cheap to call often, since it sends at most once per half interval."""
        if self.watchdog_interval is None:
            return
        now = self._clock()
        with self._lock:
            last = self._last_watchdog
            if last is not None and now - last < self.watchdog_interval / 2:
                return
            self._last_watchdog = now
        self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        """Free-form status line shown by ``systemctl status``."""
        self.send(f"STATUS={_one_line(text)}")

    def stopping(self) -> None:
        """Shutdown has begun."""
        self.send("STOPPING=1")

    def send(self, message: str) -> bool:
        """Send one raw notify datagram; return whether it went out."""
        if self._address is None:
            return False
        try:
            with self._lock:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            self._report_failure(exc)
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def _report_failure(self, exc: OSError) -> None:
        if not self._failed:
            self._failed = True
            log.warning("systemd notify socket unusable, notifications dropped: %s", exc)


def _socket_address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    if value:
        log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract; notifications off", value)
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half the watchdog timeout: the ping period systemd recommends (see sd_watchdog_enabled)."""
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


def _one_line(text: str) -> str:
    return " ".join(text.split())
