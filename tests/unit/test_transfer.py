"""Deploy transfers from anyone on the broker: bounded in bytes, chunks and time, and unable to
hold every slot (pure logic, no broker)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from edge_runtime.control import transfer as transfer_module
from edge_runtime.control.dispatcher import CommandRefused
from edge_runtime.control.transfer import STALE_S, DeployAssembler


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(transfer_module.time, "monotonic", fake)
    return fake


def msg(transfer: str, chunk: int, chunks: int, data: bytes, size: int,
        sha: str = "0" * 64) -> dict[str, Any]:
    return {"transfer": transfer, "sha256": sha, "size": size, "chunk": chunk, "chunks": chunks,
            "data": base64.b64encode(data).decode()}


def test_a_whole_archive_comes_back_once_every_chunk_is_in() -> None:
    archive = bytes(range(256)) * 10
    sha = hashlib.sha256(archive).hexdigest()
    assembler = DeployAssembler(1 << 20)
    assert assembler.add(msg("t", 1, 3, archive[1024:2048], len(archive), sha)) is None
    assert assembler.add(msg("t", 0, 3, archive[:1024], len(archive), sha)) is None
    done = assembler.add(msg("t", 2, 3, archive[2048:], len(archive), sha))
    assert done is not None and done[1] == archive and assembler.held_bytes == 0


def test_a_chunk_sent_again_with_other_bytes_aborts_and_holds_nothing() -> None:
    assembler = DeployAssembler(1 << 24)
    assembler.add(msg("t", 0, 4, b"a" * 1024, 4096))
    with pytest.raises(CommandRefused, match=r"chunk 0 came again with different data"):
        assembler.add(msg("t", 0, 4, b"b" * 3_000, 4096))
    assert assembler.held_bytes == 0


def test_an_identical_copy_is_ignored_and_not_counted_twice() -> None:
    assembler = DeployAssembler(1 << 24)
    for _ in range(5):
        assert assembler.add(msg("t", 0, 2, b"a" * 1024, 2048)) is None
    assert assembler.held_bytes == 1024


def test_bytes_held_never_exceed_the_announced_size() -> None:
    assembler = DeployAssembler(1 << 24)
    assembler.add(msg("t", 0, 2, b"a" * 1500, 2048))
    with pytest.raises(CommandRefused, match=r"more data than the announced size 2048"):
        assembler.add(msg("t", 1, 2, b"b" * 1500, 2048))
    assert assembler.held_bytes == 0


def test_changing_chunks_mid_transfer_is_a_clear_refusal() -> None:
    assembler = DeployAssembler(1 << 24)
    assembler.add(msg("t", 0, 3, b"a" * 1024, 3072))
    with pytest.raises(CommandRefused, match=r"'chunks' changed from 3 to 2 mid-transfer"):
        assembler.add(msg("t", 1, 2, b"b" * 1024, 3072))


@pytest.mark.parametrize(("chunks", "size"), [(100_000, 2048), (3, 2048), (0, 2048)])
def test_the_chunk_count_must_fit_the_size(chunks: int, size: int) -> None:
    with pytest.raises(CommandRefused, match=r"does not fit"):
        DeployAssembler(1 << 24).add(msg("t", 0, chunks, b"a", size))


def test_a_quiet_transfer_expires_with_a_reason_naming_the_missing_chunks(clock: Clock) -> None:
    assembler = DeployAssembler(1 << 24, idle_timeout_s=5)
    assembler.add(msg("t", 0, 3, b"a" * 1024, 3072), reply_id="r-1")
    clock.now += 4
    assert assembler.expire() == []
    clock.now += 2
    (gone,) = assembler.expire()
    assert gone.reply_id == "r-1"
    assert "timed out" in gone.error and "2 of 3 chunk(s) never arrived (1, 2)" in gone.error
    assert assembler.held_bytes == 0


def test_stale_junk_gives_its_slot_to_a_new_transfer(clock: Clock) -> None:
    assembler = DeployAssembler(1 << 24, idle_timeout_s=120)
    assembler.add(msg("junk-1", 0, 3, b"j" * 1024, 3072), reply_id="j1")
    assembler.add(msg("junk-2", 0, 3, b"j" * 1024, 3072), reply_id="j2")
    with pytest.raises(CommandRefused, match=r"in progress"):
        assembler.add(msg("real", 0, 2, b"r" * 1024, 2048))  # both still active
    clock.now += STALE_S + 0.1
    assert assembler.add(msg("real", 0, 2, b"r" * 1024, 2048), reply_id="real") is None
    (evicted,) = assembler.take_abandoned()
    assert evicted.reply_id == "j1" and "for a newer one" in evicted.error
