"""Soak: one daemon through many results and repeated broker restarts; memory, outbox, losses.

A throw-away Mosquitto (persistence on) and a subscriber with a persistent session at QoS 1 on
the device's result, status and metrics topics come up; then ``edge-runtime run`` on the digits
bundle, reading the digits validation images with ``--loop --max-frames N`` as fast as it can,
with a fresh ``--state-dir``. Each time the daemon has made another ``--restart-every`` results
(its outbox ``last_seq``, read from the state dir; the subscriber trails it by up to a few
thousand here, so counting at the subscriber would put the later restarts into the final
drain), Mosquitto is stopped (SIGTERM: it saves its sessions), kept down ``--down-s`` seconds and
started again on the same port; what the daemon makes meanwhile waits in its outbox. The next
restart also waits until the last one has recovered (see *caught up* below), so outages never
overlap. The daemon stops by itself after N results and drains its outbox on the way out.

Figures:

* wall time: from starting the daemon to its exit; results/s = N / wall time, broker outages,
  start-up and the final drain included;
* per restart: results made and seen at the subscriber when the broker was stopped; results
  made when it came back, the backlog (outbox depth) at that moment and the largest depth
  sampled until the next restart; and, from broker start, how long until
  - *daemon online*: the daemon's own ``ts`` in its first status message after the restart
    (it publishes one, ``online`` or ``degraded``, on every connect), i.e. when it reconnected;
  - *first new result*: the subscriber received a ``seq`` it had never seen (this needs the
    subscriber to reconnect too, it retries every 0.1 s; the first such ``seq`` may be one the
    broker had queued for the subscriber before the stop, not one from the daemon);
  - *caught up*: the subscriber has every ``seq`` up to the last one made before broker start,
    i.e. the backlog made while the broker was away has been delivered;
* RSS: the daemon's ``VmRSS`` from ``/proc/PID/status`` every 0.25 s, split into anonymous
  memory (``RssAnon``: heaps, SQLite's page cache) and file-backed pages (``RssFile``: shared
  libraries, mapped files), with the results the daemon had made by then (its outbox
  ``last_seq``, read from the state dir), the outbox depth and the size of its SQLite WAL.
  *At warm-up* is the first sample once ``--warmup-frames`` results were made; *max after
  warm-up* the largest sample from there on; *final* the last sample before the process exited.
  Growth = (max after warm-up - at warm-up) / at warm-up, in VmRSS. The peak backlog is the
  largest outbox depth sampled. ``--json`` keeps every sample;
* at the end: the outbox depth in the state dir after the daemon exited (opened with the
  daemon's own ``Outbox``), ``seq``\\ s 1..N the subscriber never received (missing) and
  messages it received more than once (duplicates: allowed, a message in flight when the broker
  went away is sent again), and the daemon's last metrics message (published on its way out,
  after the final drain: reconnects, messages published and acknowledged, and the pipeline's
  frame counters; a result the outbox could not store is skipped and its ``seq`` spent, so it
  shows as missing and in the ``unstored`` count).

Goals (from the requirement): RSS after warm-up grows < 5 %, the outbox drains to zero, nothing
is lost. They are reported, not enforced: the script exits 0 whatever the figures, and non-zero
only when something broke (the daemon failed or hung).

The digits bundle is built once under ``.cache/bench/fleet/`` (shared with ``fleet.py``).

    python benchmarks/soak.py [--frames 50000] [--restart-every 10000] [--down-s 1.0]
                              [--warmup-frames 5000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from daemon import CpuShare
from fleet import add_digits_arguments, digits_bundle, tool

from edge_runtime.publish.outbox import Outbox
from edge_runtime.system.sysinfo import machine_description

ROOT = Path(__file__).resolve().parents[1]
# The e2e helpers put tests/integration (the Mosquitto helper) on sys.path themselves.
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from daemon_helpers import (  # noqa: E402
    Mosquitto,
    Subscriber,
    metrics_topic,
    outbox_depth,
    outbox_last_seq,
    result_topic,
    status_topic,
)
from mosquitto import mosquitto_available  # noqa: E402

PIPELINE = "default"
SAMPLE_S = 0.25
POLL_S = 0.05
SUBSCRIBER_RETRY_S = 0.1
RUN_TIMEOUT_S = 3600.0
DELIVERY_TIMEOUT_S = 60.0
RECOVER_TIMEOUT_S = 60.0
RSS_GOAL_PCT = 5.0


# ----- what reaches the subscriber ---------------------------------------------------------------


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


# ----- the daemon's memory and outbox, sampled -----------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the daemon started
    rss_kb: int  # VmRSS = anonymous + file-backed + shared memory, each below
    anon_kb: int
    file_kb: int
    shmem_kb: int
    made: int  # results the daemon had made (outbox last_seq)
    seen: int  # distinct seqs at the subscriber
    depth: int  # outbox rows not yet acknowledged
    wal_kb: int  # size of the outbox's SQLite write-ahead log


class Sampler(threading.Thread):
    def __init__(self, process: subprocess.Popen[bytes], state_dir: Path, tally: Tally,
                 started: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.process = process
        self.state_dir = state_dir
        self.tally = tally
        self.started = started
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def run(self) -> None:
        wal = self.state_dir / "outbox.sqlite-wal"
        while not self._halt.is_set() and self.process.poll() is None:
            memory = resident_kb(self.process.pid)
            if memory.get("VmRSS"):
                sample = Sample(round(time.monotonic() - self.started, 3), memory["VmRSS"],
                                memory.get("RssAnon", 0), memory.get("RssFile", 0),
                                memory.get("RssShmem", 0),
                                outbox_last_seq(self.state_dir, PIPELINE),
                                self.tally.distinct, outbox_depth(self.state_dir),
                                wal.stat().st_size // 1024 if wal.exists() else 0)
                with self._lock:
                    self.samples.append(sample)
            self._halt.wait(SAMPLE_S)

    def stop(self) -> list[Sample]:
        self._halt.set()
        self.join()
        return self.taken()

    def taken(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)


RSS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def resident_kb(pid: int) -> dict[str, int]:
    """Resident kB of a live process, in total and by kind (empty once it is gone)."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in RSS_FIELDS:
                    found[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return found


# ----- the run -------------------------------------------------------------------------------------


@dataclass
class Run:
    exit_code: int
    wall_s: float
    restarts: list[Restart]
    samples: list[Sample]
    made: int
    depth_after_exit: int
    dropped_after_exit: int
    log_tail: str


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def settled_or_exited(restart: Restart, process: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: restart.settled or process.poll() is not None


def made_or_exited(state_dir: Path, count: int, process: subprocess.Popen[bytes]
                   ) -> Callable[[], bool]:
    return lambda: process.poll() is not None or outbox_last_seq(state_dir, PIPELINE) >= count


def restart_broker(number: int, server: Any, tally: Tally, state_dir: Path, down_s: float
                   ) -> Restart:
    made, seen = outbox_last_seq(state_dir, PIPELINE), tally.distinct
    server.stop()
    stopped = time.monotonic()
    time.sleep(max(0.0, down_s - (time.monotonic() - stopped)))
    server.start()
    up_at, up_wall = time.monotonic(), time.time()
    restart = Restart(number=number, made_at_stop=made, seen_at_stop=seen,
                      down_s=round(up_at - stopped, 3),
                      made_at_up=outbox_last_seq(state_dir, PIPELINE),
                      backlog_at_up=outbox_depth(state_dir),
                      stopped_at=stopped, up_at=up_at, up_wall=up_wall)
    tally.watch(restart)
    return restart


def soak(args: argparse.Namespace, bundle: Path, images: Path, work: Path, tally: Tally) -> Run:
    state_dir = work / "state"
    log_path = work / "daemon.log"
    with Mosquitto(work / "mosquitto") as server:
        subscriber = Subscriber(server, [tally.result_topic, tally.status_topic,
                                         tally.metrics_topic])
        # Count instead of keeping every message; come back quickly after each restart.
        subscriber.client.on_message = tally.on_message
        subscriber.client.reconnect_delay_set(min_delay=SUBSCRIBER_RETRY_S,
                                              max_delay=SUBSCRIBER_RETRY_S)
        with subscriber, open(log_path, "wb") as log:
            command = [tool("edge-runtime"), "run", "--bundle", str(bundle),
                       "--source", str(images), "--loop", "--max-frames", str(args.frames),
                       "--mqtt", server.url, "--device-id", tally.device,
                       "--state-dir", str(state_dir)]
            started = time.monotonic()
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
            sampler = Sampler(process, state_dir, tally, started)
            sampler.start()
            restarts: list[Restart] = []
            try:
                threshold = args.restart_every
                while threshold < args.frames:
                    if restarts:  # let the last outage's recovery finish before the next one
                        wait_until(settled_or_exited(restarts[-1], process), RECOVER_TIMEOUT_S)
                    if not wait_until(made_or_exited(state_dir, threshold, process),
                                      RUN_TIMEOUT_S):
                        raise SystemExit("the daemon stopped making results")
                    if process.poll() is not None:
                        break
                    restarts.append(restart_broker(len(restarts) + 1, server, tally, state_dir,
                                                   args.down_s))
                    threshold += args.restart_every
                exit_code = process.wait(max(1.0, RUN_TIMEOUT_S - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise SystemExit(f"the daemon did not finish within {RUN_TIMEOUT_S:.0f} s") from None
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                samples = sampler.stop()
            wall_s = time.monotonic() - started
            if exit_code != 0:
                raise SystemExit(f"edge-runtime exited with {exit_code}:\n{tail(log_path)}")
            with Outbox(state_dir / "outbox.sqlite") as outbox:
                made, depth, dropped = outbox.last_seq(PIPELINE), outbox.depth(), outbox.dropped
            # Deliveries to the subscriber may trail the daemon's exit by a little.
            wait_until(lambda: tally.contiguous >= made, DELIVERY_TIMEOUT_S)
            wait_until(lambda: tally.last_metrics is not None, 2.0)
    for index, restart in enumerate(restarts):
        until = restarts[index + 1].stopped_at if index + 1 < len(restarts) else float("inf")
        window = [s.depth for s in samples if restart.stopped_at <= started + s.t < until]
        restart.peak_backlog = max([restart.backlog_at_up, *window])
    return Run(exit_code, wall_s, restarts, samples, made, depth, dropped, tail(log_path))


def tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(text[-lines:])


# ----- report ------------------------------------------------------------------------------------


def summarise(args: argparse.Namespace, run: Run, tally: Tally, others: dict[str, float]
              ) -> dict[str, Any]:
    after = [s for s in run.samples if s.made >= args.warmup_frames]
    warm = after[0] if after else None
    peak = max(after, key=lambda s: s.rss_kb) if after else None
    final = run.samples[-1] if run.samples else None
    growth = (peak.rss_kb - warm.rss_kb) / warm.rss_kb * 100 if warm and peak else None
    missing = tally.missing(args.frames)
    metrics = tally.last_metrics or {}
    frames = ((metrics.get("pipelines") or {}).get(PIPELINE) or {}).get("frames") or {}
    # A result the outbox refused is skipped and its seq spent; the counter says why it is missing.
    unstored = int(frames.get("unstored", 0))
    nothing_lost = (missing == 0 and run.made == args.frames and run.dropped_after_exit == 0
                    and unstored == 0)
    return {
        "machine": machine_description(),
        "frames": args.frames, "restart_every": args.restart_every, "down_s": args.down_s,
        "warmup_frames": args.warmup_frames,
        "made": run.made, "wall_s": round(run.wall_s, 1),
        "results_per_s": round(run.made / run.wall_s, 1),
        "restarts": [r.figures() for r in run.restarts],
        "rss_mib": {
            "at_warmup": _mib(warm), "max_after_warmup": _mib(peak), "final": _mib(final),
            "growth_pct": round(growth, 2) if growth is not None else None,
        },
        "peak_backlog": max((s.depth for s in run.samples), default=0),
        "outbox_depth_at_end": run.depth_after_exit,
        "outbox_dropped": run.dropped_after_exit,
        "received": tally.messages, "distinct": tally.distinct, "missing": missing,
        "duplicates": tally.duplicates, "beyond_n": tally.beyond(args.frames),
        "final_metrics": {"mqtt": metrics.get("mqtt"), "outbox": metrics.get("outbox"),
                          "frames": frames},
        "others_cpu_share": {k: round(v, 3) for k, v in others.items()},
        "goals": {
            f"RSS after warm-up grows < {RSS_GOAL_PCT:g} %":
                growth is not None and growth < RSS_GOAL_PCT,
            "outbox drained to zero": run.depth_after_exit == 0,
            "nothing lost": nothing_lost,
        },
        "daemon_log_tail": run.log_tail,
        "samples": [asdict(s) for s in run.samples],
    }


def _mib(sample: Sample | None) -> dict[str, float] | None:
    """A sample's resident memory in MiB: total, anonymous, file-backed."""
    if sample is None:
        return None
    return {"total": round(sample.rss_kb / 1024, 1), "anon": round(sample.anon_kb / 1024, 1),
            "file": round(sample.file_kb / 1024, 1), "made": sample.made}


def _rss(memory: dict[str, float] | None) -> str:
    if memory is None:
        return "-"
    return (f"{memory['total']:.1f} MiB (anonymous {memory['anon']:.1f} + files "
            f"{memory['file']:.1f}) at {memory['made']:.0f} results")


def _s(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def print_report(r: dict[str, Any]) -> None:
    rss = r["rss_mib"]
    print(f"soak on {r['machine']}")
    print(f"  {r['frames']} frames, broker restarted every {r['restart_every']} results made, "
          f"down {r['down_s']:g} s each")
    rows = [
        ("results made / wall time", f"{r['made']} / {r['wall_s']:.1f} s"),
        ("results/s (outages included)", f"{r['results_per_s']:.1f}"),
        ("broker restarts", str(len(r["restarts"]))),
        (f"RSS at warm-up ({r['warmup_frames']} results)", _rss(rss["at_warmup"])),
        ("RSS max after warm-up", _rss(rss["max_after_warmup"])),
        ("RSS final (last sample before exit)", _rss(rss["final"])),
        ("RSS growth after warm-up", f"{rss['growth_pct']} %"),
        ("peak outbox backlog (sampled)", str(r["peak_backlog"])),
        ("outbox depth after exit", str(r["outbox_depth_at_end"])),
        ("outbox rows dropped (full)", str(r["outbox_dropped"])),
        ("received / distinct seqs", f"{r['received']} / {r['distinct']}"),
        (f"missing of 1..{r['frames']}", str(r["missing"])),
        ("duplicates", str(r["duplicates"])),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    if r["restarts"]:
        print("\n  restart  made / seen at stop  down s  made at up  backlog at up / peak  "
              "daemon online s  first new result s  caught up s")
        for x in r["restarts"]:
            at_stop = f"{x['made_at_stop']} / {x['seen_at_stop']}"
            backlog = f"{x['backlog_at_up']} / {x['peak_backlog']}"
            print(f"  {x['number']:>7}  {at_stop:>19}  {x['down_s']:>6.2f}  "
                  f"{x['made_at_up']:>10}  {backlog:>19}  "
                  f"{_s(x['daemon_online_s']):>15}  {_s(x['first_new_result_s']):>18}  "
                  f"{_s(x['caught_up_s']):>11}")
        print("  (seconds from the broker's start; backlog = outbox depth, peak = largest sampled "
              "until the next restart)")
    mqtt = (r["final_metrics"] or {}).get("mqtt") or {}
    if mqtt:
        print(f"\n  daemon's last metrics message (sent before its final drain): reconnects "
              f"{mqtt.get('reconnects')}, published {mqtt.get('published')}, acked "
              f"{mqtt.get('acked')}, rejected {mqtt.get('rejected')}")
    frames = (r["final_metrics"] or {}).get("frames") or {}
    if frames:
        print("  frames: " + ", ".join(f"{k} {v}" for k, v in frames.items()))
    shares = r["others_cpu_share"]
    print(f"  CPU taken elsewhere meanwhile: other processes {shares['others']:.0%}, "
          f"hypervisor {shares['steal']:.0%} of both cores")
    print()
    for goal, met in r["goals"].items():
        print(f"  goal: {goal}: {'met' if met else 'NOT met'}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--frames", type=int, default=50_000,
                        help="results the daemon makes before it stops (--max-frames)")
    parser.add_argument("--restart-every", type=int, default=10_000,
                        help="restart the broker each time the daemon has made this many more")
    parser.add_argument("--down-s", type=float, default=1.0,
                        help="seconds the broker stays down at each restart")
    parser.add_argument("--warmup-frames", type=int, default=5_000,
                        help="results made before the reference RSS sample")
    add_digits_arguments(parser, "image folder the daemon reads in a loop (default: the digits "
                                 "validation images made with the bundle)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the report, with every sample, to PATH")
    args = parser.parse_args(argv)
    if min(args.frames, args.restart_every, args.warmup_frames) < 1 or args.down_s < 0:
        parser.error("counts must be at least 1 and --down-s not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bundle = args.bundle or digits_bundle()
    if not args.source.is_dir():
        raise SystemExit(f"no image folder at {args.source}; give --source DIR")
    if not mosquitto_available():
        raise SystemExit("Mosquitto is not installed (/usr/sbin/mosquitto)")
    tally = Tally(f"soak-{uuid.uuid4().hex[:6]}")
    share = CpuShare()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        run = soak(args, bundle, args.source, Path(tmp), tally)
    report = summarise(args, run, tally, share.shares())
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
