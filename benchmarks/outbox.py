"""How fast results get through the durable outbox, and what it costs over a bare publish.

Runs against a throw-away Mosquitto (or ``--mqtt URL``) at QoS 1 and measures:

* sustained results/s: results appended as fast as the pipeline thread can, until the broker
  acknowledged every one and the outbox is empty again;
* latency from "result ready" to "subscriber has it", through Outbox + MqttLink and through a
  bare paho publish, at a steady pace (p50 / p99), and what the outbox adds.

    python benchmarks/outbox.py [--count 5000] [--latency-count 1000] [--rate 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_runtime.publish import (
    FrameInfo,
    ModelInfo,
    MqttLink,
    MqttSettings,
    Outbox,
    ResultMessage,
    Timing,
    Topics,
    parse_mqtt_url,
)

ROOT = Path(__file__).resolve().parents[1]
STREAM = "default"


def make_result(topics: Topics, index: int, run: str = "") -> ResultMessage:
    return ResultMessage(
        device=topics.device, pipeline=STREAM, seq=0, ts=time.time(),
        model=ModelInfo("mobilenet_v2", "1", "0" * 64),
        frame=FrameInfo(index, run, time.time()),
        task="classification",
        output={"predictions": [{"label": f"class_{k}", "index": k, "score": 0.1} for k in range(5)]},
        timing_ms=Timing(0.4, 4.9, 0.1, 5.4),
    )


class Arrivals:
    """A subscriber that notes when each frame index of the current run arrived (first copy)."""

    def __init__(self, settings: MqttSettings, topic: str) -> None:
        self.times: dict[int, float] = {}
        self.run = ""
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}")
        if settings.username:
            self.client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            self.client.tls_set(ca_certs=str(settings.ca_file) if settings.ca_file else None)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(settings.host, settings.port)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise SystemExit("benchmark subscriber could not subscribe")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        frame = json.loads(message.payload)["frame"]
        with self._cond:
            if frame["ref"] == self.run:
                self.times.setdefault(frame["index"], now)
                self._cond.notify_all()

    def expect(self, run: str) -> None:
        """Count only results tagged ``run`` from now on."""
        with self._cond:
            self.run = run
            self.times.clear()

    def wait_for(self, count: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.times) >= count, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def measure_throughput(
    outbox: Outbox, link: MqttLink, arrivals: Arrivals, topics: Topics, count: int
) -> dict[str, float]:
    arrivals.expect("throughput")
    messages = [make_result(topics, i, "throughput") for i in range(count)]
    topic = topics.result(STREAM)
    start = time.perf_counter()
    for message in messages:
        outbox.append(STREAM, topic, message.build)
        link.wake()
    appended = time.perf_counter()
    while outbox.depth() > 0:
        time.sleep(0.001)
    acked = time.perf_counter()
    if not arrivals.wait_for(count, timeout=60):
        raise SystemExit(f"only {len(arrivals.times)} of {count} results arrived")
    received = time.perf_counter()
    return {
        "results": count,
        "append_per_s": count / (appended - start),
        "sustained_per_s": count / (acked - start),
        "delivered_per_s": count / (received - start),
    }


def paced(count: int, rate: float) -> Iterator[int]:
    start = time.perf_counter()
    for index in range(count):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield index


def measure_latency(
    send: Callable[[ResultMessage], None], arrivals: Arrivals, topics: Topics, count: int,
    rate: float, run: str,
) -> dict[str, float]:
    arrivals.expect(run)
    sent_at: dict[int, float] = {}
    for index in paced(count, rate):
        message = make_result(topics, index, run)
        sent_at[index] = time.perf_counter()
        send(message)
    if not arrivals.wait_for(count, timeout=30):
        raise SystemExit(f"only {len(arrivals.times)} of {count} results arrived")
    latencies = sorted((arrivals.times[i] - sent_at[i]) * 1000 for i in sent_at)
    cuts = statistics.quantiles(latencies, n=100)
    return {"p50_ms": cuts[49], "p99_ms": cuts[98]}


def direct_sender(settings: MqttSettings, topic: str) -> tuple[Callable[[ResultMessage], None],
                                                                Callable[[], None]]:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-direct-{uuid.uuid4().hex[:6]}")
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set(ca_certs=str(settings.ca_file) if settings.ca_file else None)
    client.max_inflight_messages_set(settings.max_inflight)
    client.connect(settings.host, settings.port)
    client.loop_start()

    def send(message: ResultMessage) -> None:
        client.publish(topic, message.build(message.frame.index + 1), qos=1)

    def close() -> None:
        client.disconnect()
        client.loop_stop()

    return send, close


@contextmanager
def broker(url: str | None) -> Iterator[MqttSettings]:
    if url:
        yield parse_mqtt_url(url)
        return
    sys.path.append(str(ROOT / "tests"))
    from support.mosquitto import Mosquitto, mosquitto_available

    if not mosquitto_available():
        raise SystemExit("Mosquitto is not installed; give --mqtt URL of a broker to use")
    with tempfile.TemporaryDirectory() as work, Mosquitto(Path(work)) as server:
        yield server.settings()


def measure_link(
    args: argparse.Namespace, outbox: Outbox, link: MqttLink, arrivals: Arrivals, topics: Topics
) -> tuple[dict[str, float], dict[str, float]]:
    deadline = time.monotonic() + 10
    while not link.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    if not link.connected:
        raise SystemExit(f"cannot connect: {link.last_error}")
    throughput = measure_throughput(outbox, link, arrivals, topics, args.count)
    topic = topics.result(STREAM)

    def via_outbox(message: ResultMessage) -> None:
        outbox.append(STREAM, topic, message.build)
        link.wake()

    latency = measure_latency(via_outbox, arrivals, topics, args.latency_count, args.rate,
                              "outbox")
    return throughput, latency


def run(args: argparse.Namespace) -> dict[str, Any]:
    topics = Topics(f"bench-{uuid.uuid4().hex[:6]}")
    topic = topics.result(STREAM)
    with broker(args.mqtt) as settings, tempfile.TemporaryDirectory() as state:
        arrivals = Arrivals(settings, topic)
        with Outbox(Path(state) / "outbox.db") as outbox:
            link = MqttLink(settings, topics, outbox)
            link.start()
            try:
                throughput, outboxed = measure_link(args, outbox, link, arrivals, topics)
            finally:
                link.stop()
        send, close = direct_sender(settings, topic)
        try:
            direct = measure_latency(send, arrivals, topics, args.latency_count, args.rate,
                                     "direct")
        finally:
            close()
            arrivals.close()
    payload_bytes = len(make_result(topics, 0).build(1))
    return {
        "broker": settings.address,
        "qos": 1,
        "payload_bytes": payload_bytes,
        "throughput": throughput,
        "latency_rate_per_s": args.rate,
        "latency_outbox": outboxed,
        "latency_direct": direct,
        "latency_added_ms": {
            "p50": outboxed["p50_ms"] - direct["p50_ms"],
            "p99": outboxed["p99_ms"] - direct["p99_ms"],
        },
    }


def print_table(report: dict[str, Any]) -> None:
    t, o, d, a = (report[k] for k in ("throughput", "latency_outbox", "latency_direct",
                                      "latency_added_ms"))
    rows = [
        ("sustained results/s (append → broker ack)", f"{t['sustained_per_s']:,.0f}"),
        ("delivered results/s (append → subscriber)", f"{t['delivered_per_s']:,.0f}"),
        ("append rate while sending (results/s)", f"{t['append_per_s']:,.0f}"),
        (f"latency p50 / p99 via outbox (ms, {report['latency_rate_per_s']:g}/s)",
         f"{o['p50_ms']:.2f} / {o['p99_ms']:.2f}"),
        ("latency p50 / p99 direct paho (ms)", f"{d['p50_ms']:.2f} / {d['p99_ms']:.2f}"),
        ("added by the outbox p50 / p99 (ms)", f"{a['p50']:.2f} / {a['p99']:.2f}"),
    ]
    print(f"outbox benchmark: {report['broker']}, QoS 1, {report['payload_bytes']} B results, "
          f"{t['results']:,} results")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>15}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="results for the throughput run")
    parser.add_argument("--latency-count", type=int, default=1000, help="results per latency run")
    parser.add_argument("--rate", type=float, default=200.0, help="results/s in the latency runs")
    parser.add_argument("--mqtt", help="use this broker instead of starting Mosquitto")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
