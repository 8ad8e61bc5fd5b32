"""A benchmark's MQTT subscriber: notes when each message reached it, per topic."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

POLL_S = 0.01


@dataclass(frozen=True)
class Arrival:
    at: float
    payload: dict[str, Any]


class Arrivals:
    """A subscriber that notes when each message reached it, per topic."""

    def __init__(self, host: str, port: int) -> None:
        self._lock = threading.Lock()
        self._by_topic: dict[str, list[Arrival]] = {}
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"bench-daemon-{uuid.uuid4().hex[:6]}")
        self.client.on_connect = lambda c, *_: c.subscribe("edge/#", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise SystemExit("the benchmark subscriber could not subscribe")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        at = time.time()
        if message.retain:
            return
        with self._lock:
            self._by_topic.setdefault(message.topic, []).append(
                Arrival(at, json.loads(message.payload)))

    def take(self, topic: str, count: int = 0, timeout: float = 5.0) -> list[Arrival]:
        """What arrived on ``topic``, waiting up to ``timeout`` for at least ``count``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                got = list(self._by_topic.get(topic, []))
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(POLL_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
