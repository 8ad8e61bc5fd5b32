"""Getting results off the device: topics, wire messages, the durable outbox and the MQTT link.

A result is appended to the :class:`Outbox` (on disk, numbered per pipeline), then
:class:`MqttLink` sends it and deletes it once the broker acknowledged it. The embedded broker
lives in :mod:`edge_runtime.publish.broker` and is not imported here (amqtt is optional).
"""

from __future__ import annotations

from edge_runtime.publish.mqtt import MqttLink
from edge_runtime.publish.outbox import Outbox, OutboxItem
from edge_runtime.publish.payloads import (
    FrameInfo,
    ModelInfo,
    PayloadError,
    ResultMessage,
    StatusMessage,
    Timing,
)
from edge_runtime.publish.settings import MqttSettings, parse_mqtt_url
from edge_runtime.publish.topics import Topics

__all__ = [
    "FrameInfo",
    "ModelInfo",
    "MqttLink",
    "MqttSettings",
    "Outbox",
    "OutboxItem",
    "PayloadError",
    "ResultMessage",
    "StatusMessage",
    "Timing",
    "Topics",
    "parse_mqtt_url",
]
