"""Fleet deploy convergence: how long one signed release takes to reach N real daemons.

For each fleet size, a throw-away Mosquitto and N ``edge-runtime run`` daemons (the digits
bundle v1, signed and packed, on the validation images paced at ``--fps``, one interpreter
thread each, started ``--stagger`` seconds apart) come up; then ``converters.deploy.deploy`` —
what ``edge-convert deploy`` runs — packs, signs and pushes v2 to every device. Measured from
the deploy call:

* replies: every device answered (after unpacking, verifying, health-checking and swapping);
* converged: every device answered ok *and* one of its results carrying v2 reached a subscriber.

All daemons share this machine's cores, unlike a real fleet, so the figures are an upper bound
on what the devices contribute and show how the broker and the deploy tool scale.
The digits bundle is built once under ``.cache/bench/fleet/`` unless ``--bundle`` names one.

    python benchmarks/fleet.py [--devices 10 50] [--fps 2] [--stagger 0.1]
                               [--bundle DIR --source IMAGES] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from common import mosquitto
from paho.mqtt.enums import CallbackAPIVersion

from converters.deploy import deploy
from edge_runtime.system.sysinfo import machine_description

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench" / "fleet"
BIN = Path(sys.executable).parent
BUNDLE_DIR = "digits-rpi4"
START_TIMEOUT_S = 300.0
CONVERGE_TIMEOUT_S = 180.0


def tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def run(*args: str, timeout: float = 600) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{done.stderr[-2000:]}")
    return done.stdout


# ----- material --------------------------------------------------------------------------------


def digits_bundle() -> Path:
    """The digits bundle for the rpi4 profile, built once (trains a small model, ~30 s)."""
    bundle = CACHE / "bundles" / BUNDLE_DIR
    if (bundle / "manifest.json").is_file():
        return bundle
    data = CACHE / "digits"
    run(sys.executable, "-m", "converters.samples", "digits", str(data))
    run(tool("edge-convert"), "convert", str(data / "digits.keras"), "--profile", "rpi4",
        "--calibration", str(data / "images" / "train"),
        "--validation", str(data / "images" / "val"), "--labels", str(data / "labels.txt"),
        "--input-mean", "0", "--input-std", "255", "--color", "GRAY", "--name", "digits",
        "--out", str(CACHE / "bundles"))
    return bundle


@dataclass(frozen=True)
class Releases:
    v1_packed: Path
    v2_dir: Path
    private_key: Path
    public_key: Path


def releases(bundle: Path, work: Path) -> Releases:
    run(tool("edge-convert"), "keygen", str(work / "keys"))
    private, public = work / "keys" / "edge-signing.key", work / "keys" / "edge-signing.pub"
    v1 = copy_release(bundle, work / "v1", "1")
    packed = Path(run(tool("edge-convert"), "pack", str(v1), "--sign-key", str(private))
                  .strip().splitlines()[-1])
    return Releases(packed, copy_release(bundle, work / "v2", "2"), private, public)


def copy_release(bundle: Path, parent: Path, version: str) -> Path:
    target = parent / BUNDLE_DIR
    shutil.copytree(bundle, target)
    (target / "signature.json").unlink(missing_ok=True)
    manifest = target / "manifest.json"
    data = json.loads(manifest.read_text())
    data["version"] = version
    manifest.write_text(json.dumps(data, indent=2))
    return target


# ----- what reaches the broker -------------------------------------------------------------------


@dataclass
class Watch:
    """Arrival times (monotonic): each device's online status, deploy reply, first result per
    model version."""

    online: dict[str, float] = field(default_factory=dict)
    replies: dict[str, float] = field(default_factory=dict)
    first_result: dict[tuple[str, str], float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.monotonic()
        parts = msg.topic.split("/")
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            return
        with self.lock:
            if parts[-1] == "status" and payload.get("state") == "online":
                self.online.setdefault(parts[1], now)
            elif parts[-1] == "reply" and payload.get("ok"):
                self.replies[parts[1]] = now
            elif parts[-1] == "result":
                key = (parts[1], str(payload["model"]["version"]))
                self.first_result.setdefault(key, now)

    def all_online(self, devices: Sequence[str]) -> bool:
        with self.lock:
            return all(d in self.online for d in devices)

    def serving(self, devices: Sequence[str], version: str) -> dict[str, float]:
        with self.lock:
            return {d: self.first_result[(d, version)] for d in devices
                    if (d, version) in self.first_result}


@contextmanager
def watching(host: str, port: int) -> Iterator[Watch]:
    watch = Watch()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-bench-{uuid.uuid4().hex[:8]}")
    client.on_message = watch.on_message
    client.connect(host, port, 30)
    client.subscribe([("edge/+/status", 1), ("edge/+/default/result", 0),
                      ("edge/+/cmd/deploy/reply", 1)])
    client.loop_start()
    try:
        yield watch
    finally:
        client.disconnect()
        client.loop_stop()


# ----- the fleet ---------------------------------------------------------------------------------


@contextmanager
def fleet(size: int, url: str, rel: Releases, images: Path, work: Path, fps: float,
          stagger: float) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for n in range(size):
            device = f"bench-{n:03d}"
            with open(work / f"{device}.log", "wb") as log:
                daemons[device] = subprocess.Popen(
                    [tool("edge-runtime"), "run", "--bundle", str(rel.v1_packed),
                     "--source", str(images), "--loop", "--fps", str(fps), "--threads", "1",
                     "--mqtt", url, "--device-id", device, "--state-dir", str(work / device),
                     "--trusted-key", str(rel.public_key)],
                    stdout=subprocess.DEVNULL, stderr=log)
            time.sleep(stagger)
        yield daemons
    finally:
        for process in daemons.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in daemons.values():
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def rss_mb(pids: Sequence[int]) -> list[float]:
    sizes = []
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        line = next((x for x in text.splitlines() if x.startswith("VmRSS:")), "")
        if line:
            sizes.append(int(line.split()[1]) / 1024)
    return sizes


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 2), "max": round(max(values), 2)}


def measure(size: int, rel: Releases, images: Path, args: argparse.Namespace) -> dict[str, Any]:
    with mosquitto() as (host, port), watching(host, port) as watch, \
            tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        url = f"mqtt://{host}:{port}"
        started = time.monotonic()
        with fleet(size, url, rel, images, Path(tmp), args.fps, args.stagger) as daemons:
            devices = list(daemons)
            wait_until(lambda: watch.all_online(devices)
                       and len(watch.serving(devices, "1")) == size, START_TIMEOUT_S,
                       "the fleet to come online")
            up_s = time.monotonic() - started
            memory = rss_mb([p.pid for p in daemons.values()])
            t0 = time.monotonic()
            results = deploy(rel.v2_dir, url=url, devices=devices, sign_key=rel.private_key,
                             timeout=CONVERGE_TIMEOUT_S)
            returned_s = time.monotonic() - t0
            failed = {r.device: r.error for r in results if not r.ok}
            if failed:
                raise SystemExit(f"{len(failed)} device(s) refused the release: {failed}")
            wait_until(lambda: len(watch.serving(devices, "2")) == size
                       and len(watch.replies) == size, CONVERGE_TIMEOUT_S,
                       "replies and results with the new version")
            first_new = [at - t0 for at in watch.serving(devices, "2").values()]
            replied_s = max(watch.replies[d] for d in devices) - t0
        return {
            "devices": size, "fleet_up_s": round(up_s, 1), "replies_s": round(replied_s, 2),
            "deploy_returned_s": round(returned_s, 2),
            "converged_s": round(max(replied_s, *first_new), 2),
            "reply_s": spread([r.seconds or 0.0 for r in results]),
            "first_new_result_s": spread(first_new),
            "rss_mb_per_daemon": round(statistics.mean(memory), 1) if memory else None,
            "load_1min": round(os.getloadavg()[0], 2),
        }


# ----- report ------------------------------------------------------------------------------------


def print_table(report: dict[str, Any]) -> None:
    print(f"fleet deploy convergence on {report['machine']}")
    print(f"  packed release {report['archive_kb']} KB, daemons paced at {report['fps']} fps, "
          f"1 interpreter thread each, all sharing this machine")
    header = ("devices", "fleet up s", "all replied s", "converged s", "tool returned s",
              "reply p50/max s",
              "first v2 result p50/max s", "RSS/daemon MB")
    rows = [header]
    for r in report["runs"]:
        rows.append((str(r["devices"]), f"{r['fleet_up_s']:.1f}", f"{r['replies_s']:.2f}",
                     f"{r['converged_s']:.2f}", f"{r['deploy_returned_s']:.2f}",
                     f"{r['reply_s']['p50']:.2f} / {r['reply_s']['max']:.2f}",
                     f"{r['first_new_result_s']['p50']:.2f} / {r['first_new_result_s']['max']:.2f}",
                     f"{r['rss_mb_per_daemon']}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print("  times in seconds from the deploy call (packing and signing included); 'reply' is "
          "each device's answer\n  as the deploy tool timed it from its first chunk; 'tool "
          "returned' adds the tool's MQTT teardown")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[10, 50],
                        help="fleet sizes to measure")
    parser.add_argument("--fps", type=float, default=2.0, help="pace of each daemon's source")
    parser.add_argument("--stagger", type=float, default=0.1,
                        help="seconds between daemon starts")
    add_digits_arguments(parser, "image folder the daemons read (default: the digits made with "
                                 "the bundle)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def add_digits_arguments(parser: argparse.ArgumentParser, source_help: str) -> None:
    """``--bundle`` (default: the digits bundle of :func:`digits_bundle`) and ``--source`` (default:
    the validation images made with it)."""
    parser.add_argument("--bundle", type=Path,
                        help="a digits-like bundle directory (default: build the digits one)")
    parser.add_argument("--source", type=Path, default=CACHE / "digits" / "images" / "val",
                        help=source_help)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bundle = args.bundle or digits_bundle()
    images = args.source
    if not images.is_dir():
        raise SystemExit(f"no image folder at {images}; give --source DIR")
    with tempfile.TemporaryDirectory(prefix="fleet-releases-") as tmp:
        rel = releases(bundle, Path(tmp))
        runs = [measure(size, rel, images, args) for size in args.devices]
        archive_kb = round(rel.v1_packed.stat().st_size / 1024)
    report = {"machine": machine_description(), "fps": args.fps, "archive_kb": archive_kb,
              "stagger_s": args.stagger, "runs": runs}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
