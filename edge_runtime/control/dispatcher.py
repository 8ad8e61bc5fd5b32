"""Commands on ``edge/D/cmd/VERB``: every message gets a reply; nothing on this topic can take the
daemon down.

Messages are queued by the MQTT thread, bounded by count and by bytes, and handled one at a time
on the command thread, behind a token bucket. A payload over its verb's size limit is refused
before it is queued: only its size is kept, so a flood of large messages holds no memory. Each
verb is one small function; a refused command replies
``{"ok": false, "error": "…"}`` and changes nothing.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_runtime.errors import EdgeError

log = logging.getLogger(__name__)
QUEUE_SIZE = 256
QUEUE_BYTES = 32 * 2**20


class CommandRefused(EdgeError):
    """Reply ``ok: false`` with this message."""


@dataclass(frozen=True)
class Oversized:
    """What is queued instead of a payload over the limit: its size only."""

    size: int


Handler = Callable[[dict[str, Any]], dict[str, Any]]
NO_REPLY: dict[str, Any] = {"__no_reply__": True}  # a handler's way to say "not yet"


@dataclass
class TokenBucket:
    rate: float
    burst: int
    tokens: float = 0.0
    stamp: float = 0.0

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class CommandDispatcher:
    def __init__(self, reply: Callable[[str, dict[str, Any]], None], *,
                 max_payload_bytes: int = 65536, rate_per_s: float = 20.0,
                 burst: int = 40, max_queue_bytes: int = QUEUE_BYTES) -> None:
        self._reply = reply
        self._handlers: dict[str, Handler] = {}
        self._queue: queue.Queue[tuple[str, bytes | Oversized]] = queue.Queue(QUEUE_SIZE)
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()
        self.max_queue_bytes = max_queue_bytes
        self._bucket = TokenBucket(rate_per_s, burst)
        self.max_payload_bytes = max_payload_bytes
        self.counters = {"received": 0, "handled": 0, "refused": 0, "dropped": 0,
                         "rate_limited": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_drop_log = 0.0
        self.unmetered: set[str] = set()
        self.payload_limits: dict[str, int] = {}
        self.idle_tasks: list[Callable[[], None]] = []
        self.current_id: Any = None  # the id of the command being handled (command thread)

    def register(self, verb: str, handler: Handler) -> None:
        self._handlers[verb] = handler

    @property
    def verbs(self) -> list[str]:
        return sorted(self._handlers)

    def limit_for(self, verb: str) -> int:
        return self.payload_limits.get(verb, self.max_payload_bytes)

    def submit(self, verb: str, payload: bytes) -> None:
        """Called on the MQTT thread: never blocks, never keeps a payload over the limit."""
        self.counters["received"] += 1
        item: bytes | Oversized = payload
        if len(payload) > self.limit_for(verb):
            item = Oversized(len(payload))
        size = len(item) if isinstance(item, bytes) else 0
        with self._bytes_lock:
            fits = self._queued_bytes + size <= self.max_queue_bytes
            if fits:
                self._queued_bytes += size
        try:
            if not fits:
                raise queue.Full
            self._queue.put_nowait((verb, item))
        except queue.Full:
            if fits:
                self._release(size)
            self.counters["dropped"] += 1
            now = time.monotonic()
            if now - self._last_drop_log > 5:
                self._last_drop_log = now
                log.warning("command queue full: dropping commands (flood?)")

    def _release(self, size: int) -> None:
        with self._bytes_lock:
            self._queued_bytes -= size

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                verb, payload = self._queue.get(timeout=0.2)
            except queue.Empty:
                self.run_idle_tasks()
                continue
            self._release(len(payload) if isinstance(payload, bytes) else 0)
            try:
                self.handle(verb, payload)
            except Exception:  # a handler bug must not end the command thread
                log.exception("command %r failed unexpectedly", verb[:64])

    def run_idle_tasks(self) -> None:
        """Timers of the verbs (a deploy transfer that went quiet), on the command thread."""
        for task in self.idle_tasks:
            try:
                task()
            except Exception:
                log.exception("command housekeeping failed")

    def reply_later(self, verb: str, request_id: Any, result: dict[str, Any]) -> None:
        """The reply to a command a handler answered with NO_REPLY."""
        if _plain_id(request_id):
            result = {**result, "id": request_id}
        self._send(verb, result)

    def handle(self, verb: str, payload: bytes | Oversized) -> dict[str, Any]:
        if verb not in self.unmetered and not self._bucket.take():
            self.counters["rate_limited"] += 1
            return self._send(verb, {"ok": False, "error": "rate limited; try again later"})
        request_id: Any = None
        try:
            args = self._parse(payload, self.limit_for(verb))
            request_id = args.pop("id", None)
            handler = self._handlers.get(verb)
            if handler is None:
                raise CommandRefused(f"unknown command {verb[:64]!r}; known: "
                                     f"{', '.join(self.verbs)}")
            self.current_id = request_id
            try:
                outcome = handler(args)
            finally:
                self.current_id = None
            self.counters["handled"] += 1
            if outcome is NO_REPLY:
                return outcome
            result = {"ok": True, **outcome}
        except CommandRefused as exc:
            self.counters["refused"] += 1
            log.info("command %s refused: %s", verb[:64], exc)
            result = {"ok": False, "error": str(exc)}
        except Exception as exc:
            self.counters["refused"] += 1
            log.exception("command %s failed", verb[:64])
            result = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"[:300]}
        if _plain_id(request_id):
            result["id"] = request_id
        return self._send(verb, result)

    def _send(self, verb: str, result: dict[str, Any]) -> dict[str, Any]:
        try:
            self._reply(verb, result)
        except Exception:
            log.exception("could not send the reply to %s", verb[:64])
        return result

    def _parse(self, payload: bytes | Oversized, limit: int) -> dict[str, Any]:
        size = payload.size if isinstance(payload, Oversized) else len(payload)
        if isinstance(payload, Oversized) or size > limit:
            raise CommandRefused(f"payload of {size} bytes is over the {limit}-byte limit")
        if not payload.strip():
            return {}
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise CommandRefused("payload is not valid JSON") from None
        except RecursionError:
            raise CommandRefused("payload is nested too deeply") from None
        if not isinstance(data, dict):
            raise CommandRefused(f"payload must be a JSON object, got {type(data).__name__}")
        return data


def _plain_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool) and len(str(value)) <= 128


def expect(args: dict[str, Any], key: str, kind: type | tuple[type, ...], *,
           required: bool = False) -> Any:
    """Read ``args[key]`` checked against ``kind``; CommandRefused when absent or of a wrong type."""
    if key not in args:
        if required:
            raise CommandRefused(f"missing {key!r}")
        return None
    value = args[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise CommandRefused(f"{key!r} must be a number, got a boolean")
    if not isinstance(value, kind):
        raise CommandRefused(f"{key!r} has the wrong type ({type(value).__name__})")
    return value


def only_keys(args: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise CommandRefused(f"unknown field(s): {', '.join(k[:40] for k in unknown[:5])}")
