"""A small embedded MQTT broker (amqtt) for demos and a first try without Mosquitto.

It speaks MQTT 3.1.1 only, keeps everything in memory, accepts anonymous clients and binds to
the loopback interface by default. Real deployments use Mosquitto or another broker.
amqtt is an optional dependency (``pip install 'edge-runtime[broker]'``), imported only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
_ANONYMOUS = "amqtt.plugins.authentication.AnonymousAuthPlugin"


class BrokerError(RuntimeError):
    """The embedded broker cannot run; the message is one line."""


def broker_config(host: str = "127.0.0.1", port: int = 1883) -> dict[str, Any]:
    """amqtt 0.12 configuration: one TCP listener and anonymous access, nothing else."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {_ANONYMOUS: {"allow_anonymous": True}},
    }


def run_embedded_broker(host: str = "127.0.0.1", port: int = 1883) -> None:
    """Serve until Ctrl-C or SIGTERM, then shut down cleanly. Raises BrokerError if it cannot."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host, port, asyncio.Event, on_started=_stop_on_signals))


def _stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Only possible on the main thread of a Unix process; elsewhere Ctrl-C still works.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)


async def _serve(
    host: str,
    port: int,
    make_event: Callable[[], asyncio.Event],
    on_started: Callable[[asyncio.AbstractEventLoop, asyncio.Event], None] | None,
) -> None:
    broker = _new_broker(host, port)
    try:
        await broker.start()
    except Exception as exc:
        # amqtt wraps the cause in several layers of text; the last one says what happened.
        reason = str(exc).rsplit(": ", 1)[-1]
        raise BrokerError(f"cannot start the embedded broker on {host}:{port}: {reason}") from None
    log.info("embedded MQTT broker listening on %s:%d", host, port)
    stop = make_event()
    if on_started is not None:
        on_started(asyncio.get_running_loop(), stop)
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


def _new_broker(host: str, port: int) -> Any:
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise BrokerError(
            "the embedded broker needs amqtt: pip install 'edge-runtime[broker]'"
        ) from None
    return Broker(broker_config(host, port))


class EmbeddedBroker:
    """Runs the embedded broker on its own asyncio loop in a thread.

    >>> with EmbeddedBroker(port=18830) as broker:  # doctest: +SKIP
    ...     print(broker.url)
    mqtt://127.0.0.1:18830
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start serving; returns once the listener is bound and accepts connections."""
        if self._thread is not None:
            raise BrokerError("the embedded broker is already running")
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._thread.start()
        self._wait_until_ready(timeout)

    def stop(self) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(timeout=START_TIMEOUT_S)
        self._thread = self._loop = self._stop = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(_serve(self.host, self.port, asyncio.Event, self._started))
        except BaseException as exc:  # reported to the starting thread
            self._error = exc

    def _started(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        self._loop, self._stop = loop, stop

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._error is not None:
                self.stop()
                raise BrokerError(str(self._error)) from None
            if self._loop is not None:  # set only after amqtt bound its listener
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"the embedded broker did not start on {self.host}:{self.port}")
