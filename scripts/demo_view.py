"""Show a device's results as they arrive, then a summary: accuracy, latency, throughput.

Used by scripts/demo.sh: ``python scripts/demo_view.py URL DEVICE COUNT [--timeout S]``.
Accuracy is scored from ``frame.ref`` (``digit_N/…png``) against the top prediction.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_runtime.publish.settings import parse_mqtt_url
from edge_runtime.watch import describe_result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("device")
    parser.add_argument("count", type=int)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--every", type=int, default=25, help="Print one result in N.")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    arrivals: list[float] = []
    done = threading.Event()
    ready = threading.Event()

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe(f"edge/{args.device}/#", qos=1)
        ready.set()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        data = json.loads(msg.payload)
        if msg.topic.endswith("/status"):
            print(f"status: {data.get('state')} {data.get('reason') or ''}".rstrip(), flush=True)
        elif msg.topic.endswith("/result"):
            results.append(data)
            arrivals.append(time.time())
            if len(results) % args.every == 1:
                print(describe_result(data), flush=True)
            if len(results) >= args.count:
                done.set()

    settings = parse_mqtt_url(args.url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-demo-view")
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(settings.host, settings.port)
    client.loop_start()
    ready.wait(10)
    print("READY", flush=True)
    done.wait(args.timeout)
    client.loop_stop()
    summarize(results, arrivals)
    return 0 if len(results) >= args.count else 1


def summarize(results: list[dict[str, Any]], arrivals: list[float]) -> None:
    if not results:
        print("no results arrived")
        return
    correct = sum(1 for r in results
                  if r["frame"]["ref"].split("/")[0] == r["predictions"][0]["label"])
    inference = np.array([r["timing_ms"]["inference"] for r in results])
    total = np.array([r["timing_ms"]["total"] for r in results])
    delay = np.array([(a - r["frame"]["captured_at"]) * 1e3 for r, a in zip(results, arrivals,
                                                                             strict=True)])
    span = max(arrivals[-1] - arrivals[0], 1e-9)
    seqs = [r["seq"] for r in results]
    print()
    print(f"results       {len(results)} (seq {min(seqs)}..{max(seqs)}, "
          f"{len(set(seqs))} distinct)")
    print(f"accuracy      {correct / len(results):.1%} on real handwritten digits")
    print(f"inference     p50 {np.percentile(inference, 50):.2f} ms   "
          f"p99 {np.percentile(inference, 99):.2f} ms")
    print(f"on device     p50 {np.percentile(total, 50):.2f} ms   "
          f"p99 {np.percentile(total, 99):.2f} ms  (preprocess + inference + postprocess)")
    print(f"capture→you   p50 {np.percentile(delay, 50):.2f} ms   "
          f"p99 {np.percentile(delay, 99):.2f} ms  (through the outbox and the broker)")
    print(f"throughput    {len(results) / span:.0f} results/s")


if __name__ == "__main__":
    raise SystemExit(main())
