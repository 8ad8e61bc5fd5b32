"""``edge-runtime watch``: a subscriber that pretty-prints results, status, metrics, health and
shadow reports."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt

from .publish.client import connect, make_client
from .publish.payloads import PayloadError, ResultMessage, StatusMessage
from .publish.settings import MqttSettings


def describe_result(payload: dict[str, Any]) -> str:
    """One line for a result; read through the wire type, so a malformed one says why."""
    try:
        result = ResultMessage.from_payload(payload)
    except PayloadError as exc:
        return f"malformed result: {exc}"
    msg = result.output
    head = f"{result.device}/{result.pipeline} #{result.seq} [{result.frame.ref}]"
    tail = f"  ({result.timing_ms.total:.2f} ms)"
    if "predictions" in msg:
        best = ", ".join(f"{p['label']} {p['score']:.2f}" for p in msg["predictions"][:3])
        return f"{head} {best}{tail}"
    if "detections" in msg:
        dets = msg["detections"]
        best = ", ".join(f"{d['label']} {d['score']:.2f}" for d in dets[:5])
        return f"{head} {len(dets)} detection(s) {best}{tail}"
    if "anomaly" in msg:
        a = msg["anomaly"]
        flag = "ANOMALY" if a.get("is_anomaly") else "normal"
        return f"{head} {flag} score {a.get('score')} (threshold {a.get('threshold')}){tail}"
    if "values" in msg:
        return f"{head} values {msg['values'][:8]}{tail}"
    return f"{head} {result.task}{tail}"


def describe_status(device: str, payload: dict[str, Any]) -> str:
    try:
        status = StatusMessage.from_payload(payload)
    except PayloadError as exc:
        return f"{device}: malformed status: {exc}"
    reason = f" — {status.reason}" if status.reason else ""
    return f"{device} is {status.state}{reason}"


def describe_metrics(device: str, msg: dict[str, Any]) -> str:
    parts = []
    for name, p in (msg.get("pipelines") or {}).items():
        lat = ((p.get("latency_ms") or {}).get("inference") or {}).get("p50")
        frames = p.get("frames") or {}
        parts.append(f"{name}: {p.get('fps')} fps, inference p50 {lat} ms, "
                     f"dropped {frames.get('dropped')}")
    outbox = (msg.get("outbox") or {}).get("depth")
    return f"{device} metrics: {'; '.join(parts)}; outbox {outbox}"


def describe_health(device: str, pipeline: str, msg: dict[str, Any]) -> str:
    accuracy = msg.get("estimated_accuracy")
    window = msg.get("window") or {}
    shown = f", estimated accuracy {accuracy * 100:.1f}%" if isinstance(accuracy, float) else ""
    reasons = msg.get("reasons") or []
    rollback = msg.get("rollback")
    tail = f" — rolled back to v{rollback['to']['version']}" if isinstance(rollback, dict) else ""
    return (f"{device}/{pipeline} health {str(msg.get('verdict', '?')).upper()} "
            f"(window {window.get('index')}, {window.get('results')} results{shown})"
            f"{': ' + '; '.join(map(str, reasons)) if reasons else ''}{tail}")


def describe_shadow(device: str, pipeline: str, msg: dict[str, Any]) -> str:
    candidate = (msg.get("candidate") or {}).get("version")
    agreement = msg.get("agreement")
    shown = f"{agreement * 100:.1f}%" if isinstance(agreement, float | int) else "-"
    reason = f" — {msg['reason']}" if msg.get("reason") else ""
    return (f"{device}/{pipeline} shadow v{candidate} {msg.get('state')}: agreement {shown} over "
            f"{msg.get('compared')} frame(s){reason}")


def watch(settings: MqttSettings, device: str, prefix: str, *, count: int | None = None,
          timeout: float | None = None, as_json: bool = False) -> int:
    """Print what ``device`` (``+``: every device) publishes until ``count`` results or
    ``timeout`` seconds; 0 when the count was reached (or none was asked), else 1."""
    client = make_client(settings, f"edge-watch-{uuid.uuid4().hex[:8]}", clean=True)
    seen = 0
    done = threading.Event()

    def subscribe(c: mqtt.Client) -> None:
        c.subscribe(f"{prefix}/{device}/#", qos=1)

    def on_message(_c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        nonlocal seen
        parts = m.topic.split("/")
        try:
            payload = json.loads(m.payload)
        except ValueError:
            payload = {"raw": m.payload[:200].decode("utf-8", "replace")}
        if as_json:
            print(json.dumps({"topic": m.topic, "payload": payload}), flush=True)
        elif parts[-1] == "result" and isinstance(payload, dict):
            print(describe_result(payload), flush=True)
        elif parts[-1] == "status" and isinstance(payload, dict):
            print(describe_status(parts[1], payload), flush=True)
        elif parts[-1] == "metrics" and isinstance(payload, dict):
            print(describe_metrics(parts[1], payload), flush=True)
        elif parts[-1] == "health" and isinstance(payload, dict) and len(parts) == 4:
            print(describe_health(parts[1], parts[2], payload), flush=True)
        elif parts[-1] == "shadow" and isinstance(payload, dict) and len(parts) == 4:
            print(describe_shadow(parts[1], parts[2], payload), flush=True)
        elif parts[-1] == "reply":
            print(f"{m.topic}: {json.dumps(payload)}", flush=True)
        if parts[-1] == "result":
            seen += 1
            if count is not None and seen >= count:
                done.set()

    client.on_message = on_message
    connect(client, settings, on_connect=subscribe)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            done.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        # DISCONNECT first, while the network loop runs: it goes out, and the loop ends at once.
        client.disconnect()
        client.loop_stop()
    return 0 if count is None or seen >= count else 1
