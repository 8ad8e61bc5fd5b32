"""The systemd handshake, against a notify socket the test owns in place of systemd.

READY=1 once serving, WATCHDOG=1 while every pipeline's loop is alive, STOPPING=1 on SIGTERM.
A hang is made two ways: in-process, an inference that blocks (a stuck accelerator) while the
daemon's main loop keeps running; and for real, a storage stall (another process holding the
outbox's write lock) under a real daemon. A pipeline that dies ends the daemon with a non-zero
code, so that ``Restart=on-failure`` brings it back.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.daemon import DaemonProcess, Mosquitto, free_port, new_device, run_args

from edge_runtime.config import DaemonConfig
from edge_runtime.daemon import Daemon

pytestmark = pytest.mark.mosquitto

WATCHDOG_USEC = 1_000_000  # systemd's timeout; the daemon pings about every 0.4 s
WATCHDOG_S = WATCHDOG_USEC / 1e6
# The last beat before a hang is at most one frame wait (0.25 s) old; pings may go on for one
# half-timeout (0.5 s) after it. Past this margin, a ping would mean the hang went unnoticed.
QUIET_AFTER_S = 1.0
PACED = ["--fps", "5", "--loop", "--threads", "1"]


class NotifySocket:
    """A datagram socket standing in for ``NOTIFY_SOCKET``; records each message and its time."""

    def __init__(self) -> None:
        # A short directory of its own: AF_UNIX paths are limited to 108 bytes.
        self._dir = Path(tempfile.mkdtemp(prefix="sd-"))
        self.path = self._dir / "notify"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.1)
        self._cond = threading.Condition()
        self._received: list[tuple[float, dict[str, str]]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._cond:
                self._received.append((time.monotonic(), fields))
                self._cond.notify_all()

    def times(self, key: str) -> list[float]:
        """When each message carrying ``key`` (READY, WATCHDOG, STOPPING, STATUS) arrived."""
        with self._cond:
            return [at for at, fields in self._received if key in fields]

    def wait_for(self, key: str, timeout: float, count: int = 1, after: float = 0.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(at > after for at in self.times(key)) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """The notify socket, advertised with a watchdog to daemons started by this test."""
    listener = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield listener
    listener.close()


def pings_between(notify: NotifySocket, start: float, end: float) -> list[float]:
    return [at for at in notify.times("WATCHDOG") if start < at <= end]


def start_daemon(broker: Mosquitto, digits: Path, bundle: Path, workdir: Path) -> DaemonProcess:
    args = run_args(bundle, digits / "images" / "val", broker_url=broker.url,
                    device=new_device("sd"), state_dir=workdir / "state", extra=PACED)
    return DaemonProcess(args, workdir)


@contextlib.contextmanager
def outbox_write_lock(state_dir: Path) -> Iterator[None]:
    """Hold the outbox's write lock from another process: the daemon's next write waits."""
    db = sqlite3.connect(state_dir / "outbox.sqlite", isolation_level=None, timeout=5)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


# ----- a real daemon -------------------------------------------------------------------------


def test_ready_then_regular_pings_then_stopping(notify: NotifySocket, broker: Mosquitto,
                                                digits: Path, digits_bundle: Path,
                                                tmp_path: Path) -> None:
    with start_daemon(broker, digits, digits_bundle, tmp_path) as daemon:
        assert notify.wait_for("READY", 30), daemon.tail()
        ready = notify.times("READY")[0]
        assert notify.wait_for("WATCHDOG", 10, count=6, after=ready), daemon.tail()
        assert daemon.terminate() == 0, daemon.tail()
    assert notify.wait_for("STOPPING", 5), "no STOPPING=1 on SIGTERM"
    stopping = notify.times("STOPPING")[0]
    pings = notify.times("WATCHDOG")
    assert pings[0] > ready, "a watchdog ping came before READY=1"
    assert all(at < stopping for at in pings), "watchdog pings after STOPPING=1"
    gaps = np.diff([ready, *pings])
    # WATCHDOG_USEC is the contract: a longer silence is when systemd kills the service.
    assert gaps.max() < WATCHDOG_S, f"a {gaps.max():.2f} s silence would trip the watchdog"


def test_without_a_watchdog_there_is_ready_but_no_ping(notify: NotifySocket,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       broker: Mosquitto, digits: Path,
                                                       digits_bundle: Path,
                                                       tmp_path: Path) -> None:
    monkeypatch.delenv("WATCHDOG_USEC")
    with start_daemon(broker, digits, digits_bundle, tmp_path) as daemon:
        assert notify.wait_for("READY", 30), daemon.tail()
        time.sleep(1.5)
        assert daemon.terminate() == 0, daemon.tail()
    assert notify.wait_for("STOPPING", 5)
    assert notify.times("WATCHDOG") == []


def test_pings_stop_while_storage_stalls_and_come_back(notify: NotifySocket, broker: Mosquitto,
                                                       digits: Path, digits_bundle: Path,
                                                       tmp_path: Path) -> None:
    with start_daemon(broker, digits, digits_bundle, tmp_path) as daemon:
        assert notify.wait_for("WATCHDOG", 30, count=3), daemon.tail()
        # Shorter than SQLite's 5 s busy timeout: the write waits, then goes through.
        with outbox_write_lock(tmp_path / "state"):
            stalled = time.monotonic()
            time.sleep(3.5)
        released = time.monotonic()
        quiet = pings_between(notify, stalled + QUIET_AFTER_S + 0.25, released)
        assert quiet == [], f"{len(quiet)} ping(s) while the pipeline could not write"
        assert notify.wait_for("WATCHDOG", 5, count=2, after=released), daemon.tail()
        assert daemon.terminate() == 0, daemon.tail()


def test_a_storage_stall_past_the_busy_timeout_skips_results_and_service_resumes(
        notify: NotifySocket, broker: Mosquitto, digits: Path, digits_bundle: Path,
        tmp_path: Path) -> None:
    with start_daemon(broker, digits, digits_bundle, tmp_path) as daemon:
        assert notify.wait_for("READY", 30), daemon.tail()
        # Longer than SQLite's busy timeout: the write fails, the result is skipped and counted.
        with outbox_write_lock(tmp_path / "state"):
            assert daemon.wait_for_log("results cannot be stored", 15), daemon.tail()
        released = time.monotonic()
        assert daemon.wait_for_log("results are stored again", 15), daemon.tail()
        assert notify.wait_for("WATCHDOG", 5, count=2, after=released), daemon.tail()
        assert daemon.terminate() == 0, daemon.tail()
    assert "stopped by an unexpected error" not in daemon.stderr()


# ----- in-process: an inference that hangs ---------------------------------------------------


def in_process_config(digits: Path, bundle: Path, state_dir: Path) -> DaemonConfig:
    # Nothing listens on the port: the daemon serves and supervises without a broker.
    return DaemonConfig.model_validate({
        "device_id": "sd-hang", "state_dir": state_dir, "drain_timeout_s": 0,
        "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"},
        "pipelines": [{"bundle": bundle, "source": str(digits / "images" / "val"), "fps": 5,
                       "loop": True, "threads": 1}],
    })


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[tuple[threading.Thread, list[int]]]:
    """``daemon.run()`` on a thread, stopped and joined on the way out; the list receives the
    exit code."""
    exit_code: list[int] = []
    runner = threading.Thread(target=lambda: exit_code.append(daemon.run()), daemon=True)
    runner.start()
    try:
        yield runner, exit_code
    finally:
        daemon.request_stop()
        runner.join(30)


class HangingModel:
    """Wraps a model's ``run``: passes through until ``hang`` is set, then blocks until
    ``release``, the way a stuck accelerator would."""

    def __init__(self, run: Any) -> None:
        self._run = run
        self.hang = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, data: Any, prepared: Any = None) -> Any:
        if self.hang.is_set() and not self.release.is_set():
            self.entered.set()
            self.release.wait(30)
        return self._run(data, prepared)


def test_pings_stop_while_inference_hangs_though_the_main_loop_runs(
        notify: NotifySocket, monkeypatch: pytest.MonkeyPatch, digits: Path,
        digits_bundle: Path, tmp_path: Path) -> None:
    daemon = Daemon(in_process_config(digits, digits_bundle, tmp_path / "state"))
    model = daemon.pipelines["default"].model
    hanging = HangingModel(model.run)
    monkeypatch.setattr(model, "run", hanging)
    pets: list[float] = []
    pet = daemon._pet_watchdog

    def counted_pet() -> None:
        pets.append(time.monotonic())
        pet()

    monkeypatch.setattr(daemon, "_pet_watchdog", counted_pet)
    with running(daemon) as (_, exit_code):
        try:
            assert notify.wait_for("READY", 10)
            assert notify.wait_for("WATCHDOG", 10, count=3)
            hanging.hang.set()
            assert hanging.entered.wait(10), "the pipeline never reached the model"
            hung = time.monotonic()
            time.sleep(2.5)
            checked = time.monotonic()
            assert pings_between(notify, hung + QUIET_AFTER_S, checked) == []
            assert len([at for at in pets if at > hung + QUIET_AFTER_S]) >= 5, \
                "the main loop stopped too, so this proves nothing about the pipeline check"
            hanging.release.set()
            assert notify.wait_for("WATCHDOG", 5, count=2, after=checked)
        finally:
            hanging.release.set()
    assert exit_code == [0]
    assert notify.wait_for("STOPPING", 5)


def test_a_pipeline_that_dies_ends_the_daemon_with_a_failure(
        notify: NotifySocket, monkeypatch: pytest.MonkeyPatch, digits: Path,
        digits_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon = Daemon(in_process_config(digits, digits_bundle, tmp_path / "state"))
    model = daemon.pipelines["default"].model
    calls = {"n": 0}
    run = model.run

    def failing(data: Any, prepared: Any = None) -> Any:
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("the accelerator went away")
        return run(data, prepared)

    monkeypatch.setattr(model, "run", failing)
    # No broker here: the results it stored would be waited for through the whole final drain.
    monkeypatch.setattr("edge_runtime.daemon.FINISH_DRAIN_S", 1.0)
    with running(daemon) as (runner, exit_code):
        assert notify.wait_for("READY", 10)
        runner.join(40)
    assert exit_code == [1] and calls["n"] == 4
    assert "stopped by an unexpected error" in caplog.text
    assert "the accelerator went away" in caplog.text
    assert notify.wait_for("STOPPING", 5)
