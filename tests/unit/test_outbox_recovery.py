"""The outbox when its file is in trouble: only a corrupt database is moved aside; a read-only or
locked one is kept, reported and retried; numbering never starts again at 1 after a loss."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime.publish.outbox import Outbox, OutboxUnavailable
from edge_runtime.publish.seqmarks import RESERVE

TOPIC = "edge/dev/default/result"


def store(box: Outbox, count: int, stream: str = "default") -> list[int]:
    return [box.append(stream, TOPIC, lambda seq: f'{{"seq": {seq}}}'.encode())
            for _ in range(count)]


def queued_seqs(box: Outbox) -> list[int]:
    return [item.seq for item in box.peek(100)]


def wait_until_usable(box: Outbox, timeout: float = 5.0) -> list[int]:
    """Store one result as soon as the outbox takes it (it retries opening once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return store(box, 1)
        except OutboxUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def used(tmp_path: Path) -> Path:
    """An outbox that gave seq 1..3 and still holds them (the broker never acknowledged)."""
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        assert store(box, 3) == [1, 2, 3]
    return path


@contextlib.contextmanager
def locked_by_another_process(path: Path) -> Iterator[None]:
    """Another program holds the database exclusively (no reader gets in) until the block ends."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` cannot be written, even by root (who ignores the mode bits)."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)],
                                        capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i on this filesystem")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def set_aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


def test_a_corrupt_database_is_set_aside_and_numbering_goes_on_past_it(
        used: Path, caplog: pytest.LogCaptureFixture) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{used}{suffix}").unlink(missing_ok=True)
    used.write_bytes(b"not a database at all " * 200)
    with caplog.at_level(logging.ERROR), Outbox(used) as box:
        assert box.problem is None
        (seq,) = store(box, 1)
    assert len(set_aside(used)) == 1
    assert seq > 3, "a new result got a seq that subscribers already saw"
    assert seq <= 3 + RESERVE
    assert "corrupt" in caplog.text and "numbering continues" in caplog.text


def test_a_zero_byte_database_is_reported_and_numbering_goes_on(
        used: Path, caplog: pytest.LogCaptureFixture) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{used}{suffix}").unlink(missing_ok=True)
    used.write_bytes(b"")
    with caplog.at_level(logging.ERROR), Outbox(used) as box:
        (seq,) = store(box, 1)
    assert seq > 3
    assert "0 bytes" in caplog.text


def test_a_deleted_database_does_not_restart_numbering(used: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{used}{suffix}").unlink(missing_ok=True)
    with Outbox(used) as box:
        assert store(box, 1)[0] > 3


def test_a_healthy_restart_continues_without_a_gap(used: Path) -> None:
    with Outbox(used) as box:
        assert store(box, 2) == [4, 5]
    with Outbox(used) as box:
        assert store(box, 1) == [6]


def test_a_locked_database_is_kept_reported_and_retried(used: Path) -> None:
    with locked_by_another_process(used):
        box = Outbox(used, busy_timeout_s=0.1)
        assert set_aside(used) == [], "a locked outbox was treated as corrupt"
        assert box.problem is not None and "locked" in box.problem
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store(box, 1)
        assert box.peek(10) == []
    try:
        assert wait_until_usable(box) == [4]
        assert box.problem is None
        assert queued_seqs(box) == [1, 2, 3, 4], "queued results were stranded"
    finally:
        box.close()


def test_a_read_only_database_is_kept_and_its_queue_still_readable(used: Path) -> None:
    with read_only(used):
        with Outbox(used, busy_timeout_s=0.1) as box:
            assert queued_seqs(box) == [1, 2, 3]
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                store(box, 1)
        assert set_aside(used) == []
    with Outbox(used) as box:  # writable again: the queue is whole and numbering goes on
        assert store(box, 1) == [4]
        assert queued_seqs(box) == [1, 2, 3, 4]


def test_seq_marks_are_written_once_per_reserve_not_per_result(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    marks = tmp_path / "outbox.sqlite.seq"
    with Outbox(path) as box:
        store(box, 1)
        written = marks.stat().st_ino, marks.read_text()  # each write renames a new file in
        store(box, 50)
        assert (marks.stat().st_ino, marks.read_text()) == written
        assert '"default": 1000' in written[1]


def test_a_database_that_cannot_be_created_is_reported_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the state folder should be")
    box = Outbox(blocker / "outbox.sqlite")
    assert box.problem is not None and str(blocker) in box.problem
    with pytest.raises(OutboxUnavailable):
        store(box, 1)
    box.close()
