"""What reaches the soak's subscriber: distinct result ``seq``\\ s, duplicates, the recovery of each
broker restart and the daemon's last metrics message."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import common  # noqa: F401  (puts the tests' helpers, tests/support, on the path)
from support.daemon import metrics_topic, result_topic, status_topic

PIPELINE = "default"


@dataclass
class Restart:
    """One broker outage; the ``*_s`` figures are seconds from the broker's start."""

    number: int
    made_at_stop: int
    seen_at_stop: int
    down_s: float
    made_at_up: int
    backlog_at_up: int
    stopped_at: float = field(repr=False)  # monotonic
    up_at: float = field(repr=False)  # monotonic
    up_wall: float = field(repr=False)  # wall clock
    daemon_online_s: float | None = None
    first_new_result_s: float | None = None
    caught_up_s: float | None = None
    peak_backlog: int = 0

    @property
    def settled(self) -> bool:
        return None not in (self.daemon_online_s, self.first_new_result_s, self.caught_up_s)

    def figures(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("stopped_at", "up_at", "up_wall"):
            del data[key]
        return data


class Tally:
    """Counts distinct result ``seq``\\ s and duplicates (a set of ints: small even for 50k),
    times the recovery of each restart, and keeps the daemon's last metrics message."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.result_topic = result_topic(device, PIPELINE)
        self.status_topic = status_topic(device)
        self.metrics_topic = metrics_topic(device)
        self._lock = threading.Lock()
        self._seen: set[int] = set()
        self._contiguous = 0  # every seq 1..this has arrived
        self._open: list[Restart] = []
        self.duplicates = 0
        self.messages = 0
        self.last_metrics: dict[str, Any] | None = None

    @property
    def distinct(self) -> int:
        with self._lock:
            return len(self._seen)

    @property
    def contiguous(self) -> int:
        with self._lock:
            return self._contiguous

    def missing(self, upto: int) -> int:
        with self._lock:
            return sum(1 for seq in range(1, upto + 1) if seq not in self._seen)

    def beyond(self, upto: int) -> int:
        """Seqs received above ``upto`` (none should exist)."""
        with self._lock:
            return sum(1 for seq in self._seen if seq > upto)

    def watch(self, restart: Restart) -> None:
        with self._lock:
            self._open.append(restart)

    def on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        now = time.monotonic()
        try:
            payload = json.loads(message.payload)
        except ValueError:
            return
        with self._lock:
            if message.topic == self.result_topic:
                self._result(int(payload["seq"]), now)
            elif message.topic == self.status_topic:
                self._status(payload)
            elif message.topic == self.metrics_topic:
                self.last_metrics = payload

    def _result(self, seq: int, now: float) -> None:
        self.messages += 1
        if seq in self._seen:
            self.duplicates += 1
            return
        self._seen.add(seq)
        while self._contiguous + 1 in self._seen:
            self._contiguous += 1
        for restart in self._open:
            if restart.first_new_result_s is None:
                restart.first_new_result_s = now - restart.up_at
            if restart.caught_up_s is None and self._contiguous >= restart.made_at_up:
                restart.caught_up_s = now - restart.up_at
        self._open = [r for r in self._open if not r.settled]

    def _status(self, payload: dict[str, Any]) -> None:
        # Sent on every connect ("online" or "degraded"); retained copies come back on every
        # re-subscribe, so only a ts after the restart counts.
        if payload.get("state") not in ("online", "degraded"):
            return
        ts = float(payload.get("ts", 0.0))
        for restart in self._open:
            if restart.daemon_online_s is None and ts >= restart.up_wall:
                restart.daemon_online_s = ts - restart.up_wall
