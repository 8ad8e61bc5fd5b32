from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime.system.notify import Notifier


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    # A short directory: AF_UNIX paths are limited to about 108 bytes.
    with tempfile.TemporaryDirectory(prefix="ntf") as directory:
        path = str(Path(directory) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2)
        try:
            yield sock, path
        finally:
            sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on the socket."""
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2)
    return messages


def test_ready_status_and_stopping_arrive(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("model loaded")
    assert sock.recv(4096).decode() == "READY=1\nSTATUS=model loaded"
    notifier.status("30 fps,\n2 dropped")
    assert sock.recv(4096).decode() == "STATUS=30 fps, 2 dropped"
    notifier.stopping()
    assert sock.recv(4096).decode() == "STOPPING=1"
    notifier.close()


def test_ready_without_status(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    Notifier({"NOTIFY_SOCKET": path}).ready()
    assert sock.recv(4096).decode() == "READY=1"


def test_watchdog_interval_is_half_the_timeout(listener: tuple[socket.socket, str]) -> None:
    _, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert notifier.watchdog_interval == pytest.approx(15.0)


def test_watchdog_pings_are_rate_limited(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    clock = FakeClock()
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}, clock=clock)
    notifier.watchdog()
    clock.now += 0.2
    notifier.watchdog()
    notifier.watchdog()
    assert sock.recv(4096).decode() == "WATCHDOG=1"
    assert received(sock) == []
    clock.now += 0.4
    notifier.watchdog()
    assert received(sock) == ["WATCHDOG=1"]


def test_watchdog_for_another_pid_is_ignored(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    notifier = Notifier(env)
    assert notifier.watchdog_interval is None
    notifier.watchdog()
    assert received(sock) == []


def test_watchdog_for_this_pid(listener: tuple[socket.socket, str]) -> None:
    _, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(env).watchdog_interval == pytest.approx(2.0)


def test_abstract_socket() -> None:
    name = f"edge-notify-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1"


def test_reads_the_process_environment(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = Notifier()
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_everything_is_a_no_op_outside_systemd() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("x")
    notifier.watchdog()
    notifier.status("x")
    notifier.stopping()
    assert notifier.send("READY=1") is False


def test_dead_socket_never_raises_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "1000000"})
    with caplog.at_level(logging.WARNING, logger="edge_runtime.system.notify"):
        notifier.ready()
        notifier.watchdog()
        notifier.status("still alive")
        notifier.stopping()
    assert notifier.send("READY=1") is False
    warnings = [r for r in caplog.records if r.name == "edge_runtime.system.notify"]
    assert len(warnings) == 1


def test_unusable_socket_value_disables_notifications() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "relative/path"})
    assert not notifier.enabled
