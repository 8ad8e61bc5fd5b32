"""``edge-runtime watch``: a subscriber that pretty-prints results, status and metrics."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .publish.settings import parse_mqtt_url


def describe_result(msg: dict[str, Any]) -> str:
    head = (f"{msg.get('device')}/{msg.get('pipeline')} #{msg.get('seq')} "
            f"[{(msg.get('frame') or {}).get('ref')}]")
    timing = (msg.get("timing_ms") or {}).get("total")
    tail = f"  ({timing:.2f} ms)" if isinstance(timing, int | float) else ""
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
    return f"{head} {msg.get('task')}{tail}"


def describe_metrics(device: str, msg: dict[str, Any]) -> str:
    parts = []
    for name, p in (msg.get("pipelines") or {}).items():
        lat = ((p.get("latency_ms") or {}).get("inference") or {}).get("p50")
        frames = p.get("frames") or {}
        parts.append(f"{name}: {p.get('fps')} fps, inference p50 {lat} ms, "
                     f"dropped {frames.get('dropped')}")
    outbox = (msg.get("outbox") or {}).get("depth")
    return f"{device} metrics: {'; '.join(parts)}; outbox {outbox}"


def watch(url: str, device: str, prefix: str, *, count: int | None = None,
          timeout: float | None = None, as_json: bool = False) -> int:
    settings = parse_mqtt_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set(ca_certs=str(settings.ca_file) if settings.ca_file else None)
    seen = 0
    done = threading.Event()

    def on_connect(c: mqtt.Client, *_: Any) -> None:
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
            reason = f" — {payload['reason']}" if payload.get("reason") else ""
            print(f"{parts[1]} is {payload.get('state')}{reason}", flush=True)
        elif parts[-1] == "metrics" and isinstance(payload, dict):
            print(describe_metrics(parts[1], payload), flush=True)
        elif parts[-1] == "reply":
            print(f"{m.topic}: {json.dumps(payload)}", flush=True)
        if parts[-1] == "result":
            seen += 1
            if count is not None and seen >= count:
                done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(settings.host, settings.port, 30)
    except OSError as exc:
        print(f"error: cannot reach the broker at {settings.address}: {exc}", file=sys.stderr)
        return 2
    client.loop_start()
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            done.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
    return 0 if count is None or seen >= count else 1
