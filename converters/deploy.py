"""``edge-convert deploy``: pack, sign and push a bundle to devices over MQTT, then wait for each
device's verdict and print a table (old → new version, result, time)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge_runtime.bundles.manifest import load_bundle_dir
from edge_runtime.bundles.packing import pack_bundle
from edge_runtime.publish.client import connect, make_client
from edge_runtime.publish.payloads import PayloadError, StatusMessage
from edge_runtime.publish.settings import MqttSettings, parse_mqtt_url
from edge_runtime.publish.topics import pipeline_name, topic_level

from .canary import CanaryPlan, roll_out
from .devices import DeviceResult, results_table
from .errors import ConvertError

DEFAULT_CHUNK = 256 * 1024


def group_members(client: mqtt.Client, prefix: str, group: str, wait_s: float = 1.5) -> list[str]:
    """Devices whose retained status says they joined ``group`` (and are not offline)."""
    found: dict[str, bool] = {}

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            status = StatusMessage.from_payload(bytes(msg.payload))
        except PayloadError:
            return
        groups = status.extra.get("groups")
        if isinstance(groups, list) and group in groups:
            found[msg.topic.split("/")[1]] = status.state != "offline"

    client.on_message = on_message
    client.subscribe(f"{prefix}/+/status", qos=1)
    time.sleep(wait_s)
    client.unsubscribe(f"{prefix}/+/status")
    return sorted(d for d, online in found.items() if online)


def deploy(bundle: Path, *, url: str | MqttSettings, devices: Sequence[str],
           groups: Sequence[str] = (), sign_key: Path | None = None, prefix: str = "edge",
           pipeline: str | None = None, timeout: float = 120.0,
           chunk_size: int = DEFAULT_CHUNK, sequence: int | None = None,
           canary: CanaryPlan | None = None) -> list[DeviceResult]:
    """Push ``bundle`` to ``devices`` and the members of ``groups``. ``url``: the broker as a URL
    or as settings (TLS, client certificate, password…). Signed here, it is signed as release
    ``sequence`` and for ``groups`` (none: any device), so that a device outside them, or one
    that already served a newer release, refuses it. With ``canary``, the first devices get it
    in shadow first, and the rest only once those are healthy (:mod:`.canary`)."""
    settings = parse_mqtt_url(url) if isinstance(url, str) else url
    check_targets(devices, groups, prefix, pipeline)
    archive_path = _archive(bundle, sign_key, sequence, groups)
    archive = archive_path.read_bytes()
    manifest = load_bundle_dir(bundle).manifest if bundle.is_dir() else None
    client = make_client(settings, f"edge-deploy-{uuid.uuid4().hex[:8]}", clean=True)
    connect(client, settings)
    try:
        targets = list(dict.fromkeys([*devices, *(d for g in groups
                                                  for d in group_members(client, prefix, g))]))
        if not targets:
            raise ConvertError("no devices to deploy to (give --device, or --group with members "
                               "online)")
        name = manifest.name if manifest else bundle.name
        version = manifest.version if manifest else ""

        def push(devices: list[str], extra: dict[str, Any] | None = None) -> list[DeviceResult]:
            return _push(client, archive, devices, prefix=prefix, pipeline=pipeline,
                         timeout=timeout, chunk_size=chunk_size, name=name, version=version,
                         extra=extra)

        if canary is None:
            return push(targets)
        model = {"version": version, **({"sha256": manifest.sha256} if manifest else {})}
        return roll_out(client, targets, canary, push=push, prefix=prefix, model=model)
    finally:
        # DISCONNECT first, while the network loop runs: it goes out, and the loop ends at once.
        client.disconnect()
        client.loop_stop()


def check_targets(devices: Sequence[str], groups: Sequence[str], prefix: str,
                  pipeline: str | None) -> None:
    """Each name becomes one topic level: ``+`` or ``a/b`` would reach other devices' topics."""
    for device in devices:
        topic_level("--device", device)
    for group in groups:
        topic_level("--group", group)
    topic_level("--prefix", prefix)
    if pipeline is not None:
        pipeline_name(pipeline)


def _archive(bundle: Path, sign_key: Path | None, sequence: int | None,
             groups: Sequence[str]) -> Path:
    if bundle.is_dir():
        load_bundle_dir(bundle)
        if sign_key is None and sequence is not None:
            raise ConvertError("--sequence is signed: give --sign-key")
        return pack_bundle(bundle, sign_key=sign_key, sequence=sequence,
                           groups=groups if sign_key is not None else ())
    if bundle.name.endswith(".tar.gz") and bundle.is_file():
        if sign_key is not None or sequence is not None:
            raise ConvertError("--sign-key and --sequence need a bundle directory (a packed "
                               "bundle is signed when packed)")
        return bundle
    raise ConvertError(f"{bundle}: expected a bundle directory or a packed .tar.gz")


def _subscribe(client: mqtt.Client, topics: list[str], timeout: float = 30.0) -> None:
    """Subscribe and wait for the broker's SUBACK: a reply sent before it would be lost."""
    acked: set[int] = set()
    cond = threading.Condition()

    def on_subscribe(_c: mqtt.Client, _u: Any, mid: int, _reasons: Any, _props: Any) -> None:
        with cond:
            acked.add(mid)
            cond.notify_all()

    client.on_subscribe = on_subscribe
    _, mid = client.subscribe([(topic, 1) for topic in topics])
    with cond:
        if not cond.wait_for(lambda: mid in acked, timeout):
            raise ConvertError(f"the broker did not confirm the subscription to device replies "
                               f"within {timeout:.0f} s")


def _push(client: mqtt.Client, archive: bytes, targets: list[str], *, prefix: str,
          pipeline: str | None, timeout: float, chunk_size: int, name: str,
          version: str, extra: dict[str, Any] | None = None) -> list[DeviceResult]:
    results = {d: DeviceResult(d) for d in targets}
    transfer = uuid.uuid4().hex[:16]
    lock = threading.Lock()
    finished = threading.Event()
    started = time.monotonic()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        device = msg.topic.split("/")[1]
        try:
            reply = json.loads(msg.payload)
        except ValueError:
            return
        if device not in results or not isinstance(reply, dict) or reply.get("id") != transfer:
            return
        with lock:
            r = results[device]
            r.ok, r.error, r.reply = bool(reply.get("ok")), reply.get("error"), reply
            r.seconds = round(time.monotonic() - started, 2)
            new, old = (("candidate", "model") if reply.get("mode") == "shadow"
                        else ("model", "previous"))
            r.new_version = (reply.get(new) or {}).get("version")
            r.old_version = (reply.get(old) or {}).get("version")
            if all(x.ok is not None for x in results.values()):
                finished.set()

    client.on_message = on_message
    _subscribe(client, [f"{prefix}/{device}/cmd/deploy/reply" for device in targets])
    sha = hashlib.sha256(archive).hexdigest()
    pieces = [archive[i:i + chunk_size] for i in range(0, len(archive), chunk_size)] or [b""]
    for device in targets:
        for index, piece in enumerate(pieces):
            message = {"id": transfer, "transfer": transfer, "name": name, "version": version,
                       "sha256": sha, "size": len(archive), "chunk": index, "chunks": len(pieces),
                       "data": base64.b64encode(piece).decode("ascii")}
            if pipeline:
                message["pipeline"] = pipeline
            message.update(extra or {})
            client.publish(f"{prefix}/{device}/cmd/deploy", json.dumps(message), qos=1)
    finished.wait(timeout)
    with lock:
        for r in results.values():
            if r.ok is None:
                r.ok, r.error = False, f"no answer within {timeout:.0f} s"
        return [results[d] for d in targets]


__all__ = ["DeviceResult", "deploy", "results_table"]
