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
from pathlib import Path
from typing import Any

import common  # noqa: F401  (puts the tests' helpers, tests/support, on the path)
from fleet import add_digits_arguments, digits_bundle, tool
from monitor import CpuShare, resident_kb
from soak_report import Run, Sample, print_report, summarise
from soak_tally import PIPELINE, Restart, Tally
from support.daemon import Mosquitto, Subscriber, outbox_depth, outbox_last_seq
from support.mosquitto import mosquitto_available

from edge_runtime.publish.outbox import Outbox

SAMPLE_S = 0.25
POLL_S = 0.05
SUBSCRIBER_RETRY_S = 0.1
RUN_TIMEOUT_S = 3600.0
DELIVERY_TIMEOUT_S = 60.0
RECOVER_TIMEOUT_S = 60.0


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
