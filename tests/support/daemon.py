"""Helpers for end-to-end tests of the daemon: the real ``edge-runtime`` CLI in a subprocess,
a real Mosquitto on a free loopback port, and what reached it.

Test modules take the fixtures by name: ``broker = support.daemon.broker``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from support.mosquitto import (
    MOSQUITTO,
    Mosquitto,
    Received,
    Subscriber,
    TcpProxy,
    free_port,
    make_tls_files,
    mosquitto_available,
    read_retained,
)

__all__ = [
    "Commander",
    "DaemonProcess",
    "Mosquitto",
    "Received",
    "Subscriber",
    "TcpProxy",
    "copy_bundle",
    "edge_convert",
    "free_port",
    "make_tls_files",
    "outbox_depth",
    "read_retained",
    "result_topic",
    "results",
    "run_cli",
    "seqs",
    "wait_for",
    "wait_for_seqs",
]

PREFIX = "edge"
EXE = Path(sys.executable).parent / "edge-runtime"
TAIL_LINES = 40


def edge_runtime_exe() -> str:
    return str(EXE) if EXE.exists() else shutil.which("edge-runtime") or "edge-runtime"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``edge-runtime ARGS`` to completion, output captured."""
    return subprocess.run([edge_runtime_exe(), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def edge_convert(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``edge-convert ARGS`` to completion, output captured, TensorFlow's C++ logging quiet."""
    exe = Path(sys.executable).parent / "edge-convert"
    return subprocess.run([str(exe) if exe.exists() else "edge-convert", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def new_device(prefix: str) -> str:
    """A device id no other test uses, so retained messages never leak between tests."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ----- the daemon as a subprocess ------------------------------------------------------------


class DaemonProcess:
    """``edge-runtime -v run ARGS`` with its stderr in a file, killed if a test leaves it."""

    _counter = itertools.count()

    def __init__(self, args: Sequence[str], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        number = next(self._counter)
        self.args = list(args)
        self.stderr_path = workdir / f"daemon-{number}.stderr"
        self.stdout_path = workdir / f"daemon-{number}.stdout"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen([edge_runtime_exe(), "-v", "run", *self.args],
                                            stdout=out, stderr=err, env=env)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def tail(self, lines: int = TAIL_LINES) -> str:
        text = "\n".join(self.stderr().splitlines()[-lines:])
        return f"--- daemon stderr (last {lines} lines) ---\n{text}"

    def wait(self, timeout: float) -> int:
        """The exit code; fails the test (with the stderr tail) if it does not exit in time."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"daemon did not exit within {timeout} s\n{self.tail()}")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit code."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.alive:
            self.process.kill()
        self.process.wait(10)

    def wait_for_log(self, text: str, timeout: float) -> bool:
        return wait_for(lambda: text in self.stderr() or not self.alive, timeout) \
            and text in self.stderr()

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def run_args(bundle: Path | str, source: Path | str, *, broker_url: str, device: str,
             state_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    """Flags of ``edge-runtime run`` for one pipeline."""
    return ["--bundle", str(bundle), "--source", str(source), "--mqtt", broker_url,
            "--device-id", device, "--state-dir", str(state_dir), *extra]


# ----- what reached the broker ---------------------------------------------------------------


def result_topic(device: str, pipeline: str = "default") -> str:
    return f"{PREFIX}/{device}/{pipeline}/result"


def status_topic(device: str) -> str:
    return f"{PREFIX}/{device}/status"


def metrics_topic(device: str) -> str:
    return f"{PREFIX}/{device}/metrics"


def results(sub: Subscriber, device: str, pipeline: str = "default") -> list[dict[str, Any]]:
    return [m.json() for m in sub.messages(result_topic(device, pipeline))]


def seqs(payloads: Sequence[dict[str, Any]]) -> list[int]:
    return [int(p["seq"]) for p in payloads]


def missing(seen: Sequence[int], upto: int, start: int = 1) -> list[int]:
    return sorted(set(range(start, upto + 1)) - set(seen))


def wait_for_seqs(sub: Subscriber, device: str, upto: int, timeout: float,
                  start: int = 1) -> bool:
    """True once every ``seq`` from ``start`` to ``upto`` has arrived (duplicates allowed)."""
    wanted = set(range(start, upto + 1))
    return sub.wait_until(lambda msgs: wanted <= {m.json()["seq"] for m in msgs}, timeout,
                          result_topic(device))


def top_label(result: dict[str, Any]) -> str | None:
    predictions = result.get("predictions") or []
    if not predictions:
        return None
    return str(max(predictions, key=lambda p: p["score"])["label"])


def results_after(sub: Subscriber, device: str, since: float, skip: int = 1,
                  ) -> list[dict[str, Any]]:
    """Results decided after ``since`` (wall clock), minus ``skip`` that may have been in flight.

    A frame already inside the model when a command took effect still comes out the old way.
    """
    later = [r for r in results(sub, device) if r["ts"] > since]
    return sorted(later, key=lambda r: r["seq"])[skip:]


# ----- the outbox on disk --------------------------------------------------------------------


def _outbox_query(state_dir: Path, sql: str) -> int:
    path = state_dir / "outbox.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute(sql).fetchone()
    except sqlite3.OperationalError:
        return 0  # not created yet
    finally:
        db.close()
    return int(row[0]) if row and row[0] is not None else 0


def outbox_depth(state_dir: Path) -> int:
    """Results written to the durable outbox and not yet acknowledged by the broker."""
    return _outbox_query(state_dir, "SELECT COUNT(*) FROM outbox")


def outbox_last_seq(state_dir: Path, pipeline: str = "default") -> int:
    return _outbox_query(state_dir,
                         f"SELECT last_seq FROM streams WHERE stream = '{pipeline}'")


# ----- bundles -------------------------------------------------------------------------------


def copy_bundle(bundle: Path, dest: Path, version: str | None = None) -> Path:
    """A copy of ``bundle`` at ``dest``, optionally with another version in its manifest."""
    shutil.copytree(bundle, dest)
    if version is not None:
        manifest = dest / "manifest.json"
        data = json.loads(manifest.read_text())
        data["version"] = version
        manifest.write_text(json.dumps(data, indent=2))
    return dest


# ----- commands ------------------------------------------------------------------------------


class Commander:
    """Sends commands to one device through a subscriber that also sees everything it says."""

    _ids = itertools.count(1)

    def __init__(self, sub: Subscriber, device: str) -> None:
        self.sub = sub
        self.device = device

    def topic(self, verb: str) -> str:
        return f"{PREFIX}/{self.device}/cmd/{verb}"

    def send(self, verb: str, payload: bytes, qos: int = 1) -> None:
        info = self.sub.client.publish(self.topic(verb), payload, qos=qos)
        if qos:
            info.wait_for_publish(10)

    def replies(self, verb: str) -> list[dict[str, Any]]:
        return [m.json() for m in self.sub.messages(f"{self.topic(verb)}/reply")]

    def reply_for(self, request_id: object, timeout: float) -> dict[str, Any] | None:
        def arrived(msgs: list[Received]) -> bool:
            return any(_id_of(m) == request_id for m in msgs)

        if not self.sub.wait_until(arrived, timeout):
            return None
        reply: dict[str, Any] = next(m.json() for m in self.sub.messages()
                                     if _id_of(m) == request_id)
        return reply

    def request(self, verb: str, body: dict[str, Any] | None = None,
                timeout: float = 15) -> dict[str, Any]:
        """Send one command with a fresh ``id`` and return its reply (retried if rate limited)."""
        deadline = time.monotonic() + timeout
        while True:
            request_id = f"req-{next(self._ids)}"
            self.send(verb, json.dumps({**(body or {}), "id": request_id}).encode())
            reply = self.reply_for(request_id, max(0.5, deadline - time.monotonic()))
            if reply is not None:
                return reply
            limited = [r for r in self.replies(verb) if "rate limited" in str(r.get("error"))]
            if not limited or time.monotonic() >= deadline:
                pytest.fail(f"no reply to {verb} {body} within {timeout} s")
            time.sleep(0.5)


def _id_of(message: Received) -> Any:
    if not message.topic.endswith("/reply"):
        return None
    try:
        return message.json().get("id")
    except (ValueError, AttributeError):
        return None


# ----- fixtures ------------------------------------------------------------------------------


def require_mosquitto() -> None:
    if mosquitto_available():
        return
    reason = f"{MOSQUITTO} not found: apt-get install -y mosquitto mosquitto-clients"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One anonymous Mosquitto with persistence, shared by a module's tests."""
    require_mosquitto()
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as started:
        yield started


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """A factory of Mosquittos for one test: ``make_broker(users=..., tls=..., start=False)``."""
    require_mosquitto()
    made: list[Mosquitto] = []

    def make(start: bool = True, **kwargs: Any) -> Mosquitto:
        instance = Mosquitto(tmp_path / f"mosquitto-{len(made)}", **kwargs)
        made.append(instance)
        if start:
            instance.start()
        return instance

    yield make
    for instance in made:
        instance.stop()


def stop_fleet(daemons: Iterable[DaemonProcess], sub: Subscriber, devices_dir: Path) -> None:
    """Stop every daemon of a fleet test (all asked first, then each waited for) and its
    subscriber, and remove the devices' state."""
    fleet = list(daemons)
    for daemon in fleet:
        if daemon.alive:
            daemon.process.terminate()
    for daemon in fleet:
        daemon.wait(30)
    sub.stop()
    shutil.rmtree(devices_dir, ignore_errors=True)


def table_rows(stdout: str) -> dict[str, str]:
    """Device → its row in ``edge-convert deploy``'s table."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line.replace(" ", "")) == {"-"})
    rows = [line for line in lines[start + 1:] if line and not re.match(r"^\d+/\d+ ", line)]
    return {row.split()[0]: row for row in rows}
