"""Watching child processes and the machine while a benchmark runs: peak RSS (VmHWM), resident
memory by kind, CPU time sampled as the child runs, and how much CPU went to other work meanwhile.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RUN_TIMEOUT_S = 180.0
POLL_S = 0.01
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RSS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")

@dataclass
class ChildRun:
    """A finished child process: when it started (wall clock), its exit code and peak RSS."""

    started: float
    exit_code: int
    peak_rss_bytes: int
    seconds: float
    cpu_seconds: float
    cpu_samples: list[tuple[float, float]] = field(default_factory=list)  # (wall, CPU seconds)
    peak_anon_bytes: int = 0  # largest RssAnon sampled: heaps, not shared library pages
    # (wall, busy CPU seconds of the whole machine): the child and everything beside it
    machine_samples: list[tuple[float, float]] = field(default_factory=list)

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds the child used between two wall-clock times (from the samples)."""
        return _between(self.cpu_samples, start, end)

    def machine_cpu_between(self, start: float, end: float) -> float:
        """Busy CPU seconds of the whole machine between two wall-clock times."""
        return _between(self.machine_samples, start, end)


def _between(samples: list[tuple[float, float]], start: float, end: float) -> float:
    if len(samples) < 2:
        return float("nan")
    walls, cpus = zip(*samples, strict=True)
    return float(np.interp(end, walls, cpus) - np.interp(start, walls, cpus))


def run_monitored(command: Sequence[str], timeout: float = RUN_TIMEOUT_S,
                  env: dict[str, str] | None = None, quiet: bool = False) -> ChildRun:
    """Run ``command`` to its end, sampling its peak RSS (VmHWM) and CPU time as it goes."""
    started = time.time()
    clock = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL if quiet else None)
    high_water = anon = 0
    samples: list[tuple[float, float]] = []
    machine: list[tuple[float, float]] = []
    deadline = clock + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        hwm, rss_anon = _memory(process.pid)
        high_water, anon = max(high_water, hwm), max(anon, rss_anon)
        cpu = _cpu_s(process.pid)
        if cpu is not None:
            samples.append((time.time(), cpu))
        machine.append((time.time(), _machine_ticks()[0]))
        if time.perf_counter() > deadline:
            process.kill()
            process.wait()
            raise SystemExit(f"{Path(command[0]).name} did not finish within {timeout:.0f} s")
        time.sleep(POLL_S)
    process.returncode = os.waitstatus_to_exitcode(status)
    # Not usage.ru_maxrss: a child forked from this process inherits this process's RSS as its
    # high-water mark until it execs, so it would report the benchmark's memory, not its own.
    return ChildRun(started, process.returncode, high_water, time.perf_counter() - clock,
                    usage.ru_utime + usage.ru_stime, samples, anon, machine)


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process, all threads (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def _memory(pid: int) -> tuple[int, int]:
    """Peak resident bytes (VmHWM) and anonymous resident bytes (RssAnon) of a live process;
    zeros once it is gone."""
    found = {"VmHWM:": 0, "RssAnon:": 0}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key = line.split(maxsplit=1)[0] if line.strip() else ""
                if key in found:
                    found[key] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return found["VmHWM:"], found["RssAnon:"]


class CpuShare:
    """How much of the machine's CPU went elsewhere meanwhile: to processes outside this
    benchmark, and to the hypervisor (steal time, on a virtual machine).

    Other work on a 2-core machine skews every figure here; this says when it happened.
    """

    def __init__(self) -> None:
        self._start = (time.perf_counter(), _machine_ticks(), _own_cpu_s())

    def shares(self) -> dict[str, float]:
        """Fractions of all cores (0..1) since construction: ``others`` and ``steal``."""
        wall0, (busy0, steal0), own0 = self._start
        busy, steal = _machine_ticks()
        capacity = (time.perf_counter() - wall0) * (os.cpu_count() or 1)
        foreign = (busy - busy0) - (_own_cpu_s() - own0)
        return {"others": max(0.0, foreign / capacity), "steal": (steal - steal0) / capacity}


def _machine_ticks() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(v) for v in stat.readline().split()[1:9])
    busy = user + nice + system + irq + softirq
    return busy / CLOCK_TICKS, steal / CLOCK_TICKS


def _own_cpu_s() -> float:
    """CPU of this process and of every child it has reaped (the daemons, Mosquitto)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def drop_page_cache() -> None:
    """Empty the kernel's page cache (root only), so that the next process reads its libraries
    from disk as on a freshly booted board. Files written recently (a fresh ``pip install``) sit
    in the cache in large folios, and a process mapping them counts far more of each library as
    resident than one that reads it cold."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        raise SystemExit(f"--cold-cache needs root: {exc}") from None



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

