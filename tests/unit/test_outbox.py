"""The durable outbox and the sender that drains it (with a fake connection)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.publish import sender as sender_module
from edge_runtime.publish.outbox import Outbox, OutboxItem
from edge_runtime.publish.sender import ACK_BATCH, INLINE_GAP_S, OutboxSender

TOPIC = "edge/dev/default/result"


def payload_of(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


def fill(outbox: Outbox, count: int, stream: str = "default") -> list[int]:
    return [outbox.append(stream, TOPIC, payload_of) for _ in range(count)]


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "state" / "outbox.db")
    yield box
    box.close()


# Numbering -------------------------------------------------------------------------------------


def test_seq_counts_per_stream_and_build_sees_it(outbox: Outbox) -> None:
    assert fill(outbox, 3, "a") == [1, 2, 3]
    assert fill(outbox, 2, "b") == [1, 2]
    items = outbox.peek(10)
    assert [(i.stream, i.seq, json.loads(i.payload)["seq"]) for i in items] == [
        ("a", 1, 1), ("a", 2, 2), ("a", 3, 3), ("b", 1, 1), ("b", 2, 2),
    ]
    assert outbox.last_seq("a") == 3
    assert outbox.last_seq("never") == 0


def test_seq_survives_reopen_and_continues_after_everything_was_acked(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as first:
        fill(first, 5)
        first.ack(item.id for item in first.peek(10))
        assert first.depth() == 0
    with Outbox(path) as second:
        assert second.last_seq("default") == 5
        assert fill(second, 2) == [6, 7]


def test_ids_never_repeat_after_rows_are_deleted(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        fill(box, 3)
        old_ids = [i.id for i in box.peek(10)]
        box.ack(old_ids)
    with Outbox(path) as box:
        fill(box, 1)
        assert box.peek(10)[0].id > max(old_ids)


def test_failing_build_stores_nothing_and_uses_no_number(outbox: Outbox) -> None:
    fill(outbox, 1)

    def broken(seq: int) -> bytes:
        raise ValueError("cannot encode")

    with pytest.raises(ValueError, match="cannot encode"):
        outbox.append("default", TOPIC, broken)
    assert outbox.depth() == 1
    assert fill(outbox, 1) == [2]


def test_item_keeps_topic_qos_and_retain(outbox: Outbox) -> None:
    outbox.append("s", "a/b", lambda seq: b"x", qos=0, retain=True)
    (item,) = outbox.peek(1)
    assert item == OutboxItem(id=item.id, stream="s", seq=1, topic="a/b", payload=b"x", qos=0,
                              retain=True)


# Peek and ack ----------------------------------------------------------------------------------


def test_peek_is_oldest_first_and_resumes_after_an_id(outbox: Outbox) -> None:
    fill(outbox, 10)
    first = outbox.peek(4)
    rest = outbox.peek(100, after_id=first[-1].id)
    assert [i.seq for i in first] == [1, 2, 3, 4]
    assert [i.seq for i in rest] == [5, 6, 7, 8, 9, 10]


def test_ack_removes_only_the_given_ids_and_tracks_size(outbox: Outbox) -> None:
    fill(outbox, 6)
    items = outbox.peek(6)
    outbox.ack([items[1].id, items[3].id, 10_000])
    left = outbox.peek(10)
    assert [i.seq for i in left] == [1, 3, 5, 6]
    assert outbox.depth() == 4
    assert outbox.size_bytes() == sum(len(i.payload) for i in left)


def test_ack_in_large_batches(outbox: Outbox) -> None:
    fill(outbox, 1500)
    outbox.ack([i.id for i in outbox.peek(1200)])
    assert [i.seq for i in outbox.peek(1000)] == list(range(1201, 1501))


def test_depth_and_size_are_recounted_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        fill(box, 7)
        box.ack([box.peek(1)[0].id])
        depth, size = box.depth(), box.size_bytes()
    assert depth == 6
    with Outbox(path) as box:
        assert (box.depth(), box.size_bytes()) == (depth, size)


# Bounds ----------------------------------------------------------------------------------------


def test_message_bound_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_messages=5) as box:
        fill(box, 12)
        assert box.depth() == 5
        assert box.dropped == 7
        assert [i.seq for i in box.peek(10)] == [8, 9, 10, 11, 12]


def test_byte_bound_drops_the_oldest(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=100) as box:
        for _ in range(10):
            box.append("s", TOPIC, lambda seq: b"x" * 30)
        assert box.size_bytes() <= 100
        assert box.depth() == 3
        assert [i.seq for i in box.peek(10)] == [8, 9, 10]


def test_oversized_message_is_kept_alone(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=10) as box:
        fill(box, 2)
        box.append("s", TOPIC, lambda seq: b"y" * 50)
        assert [i.payload for i in box.peek(10)] == [b"y" * 50]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_messages": 0}, "max_messages"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"synchronous": "SOMETIMES"}, "synchronous"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Outbox(tmp_path / "o.db", **kwargs)  # type: ignore[arg-type]


def test_bad_qos_is_refused(outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="QoS"):
        outbox.append("s", TOPIC, payload_of, qos=3)


# Durability ------------------------------------------------------------------------------------


def test_unreadable_file_is_set_aside_and_a_fresh_outbox_starts(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database" * 100)
    with Outbox(path) as box:
        assert box.depth() == 0
        assert fill(box, 1) == [1]
    assert len(list(tmp_path.glob("outbox.db.corrupt-*"))) == 1


_KILLED_WRITER = """
import sys
from pathlib import Path
from edge_runtime.publish.outbox import Outbox
box = Outbox(Path(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    box.append("default", "t", lambda seq: str(seq).encode())
box.ack([i.id for i in box.peek(10)])
print("done", flush=True)
sys.stdin.read()
"""


def test_a_killed_process_loses_no_committed_message(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path), "300"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == b"done"
    child.send_signal(signal.SIGKILL)
    child.wait()
    with Outbox(path) as box:
        assert [int(i.payload) for i in box.peek(1000)] == list(range(11, 301))
        assert fill(box, 1) == [301]


# Threads ---------------------------------------------------------------------------------------


def test_concurrent_append_and_ack_lose_and_repeat_nothing(outbox: Outbox) -> None:
    total = 2000
    seen: list[int] = []
    done = threading.Event()

    def consume() -> None:
        cursor = 0
        while not (done.is_set() and outbox.depth() == 0):
            items = outbox.peek(50, after_id=cursor)
            if items:
                cursor = items[-1].id
                seen.extend(i.seq for i in items)
                outbox.ack(i.id for i in items)

    consumer = threading.Thread(target=consume)
    consumer.start()
    fill(outbox, total)
    done.set()
    consumer.join(timeout=30)
    assert seen == list(range(1, total + 1))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(st.integers(1, 5), st.just(-1)), max_size=40))
def test_depth_matches_a_simple_model(tmp_path_factory: pytest.TempPathFactory,
                                      ops: list[int]) -> None:
    """Appends (n > 0) and 'ack the two oldest' (-1) in any order keep the counters true."""
    with Outbox(tmp_path_factory.mktemp("model") / "o.db", max_messages=8) as box:
        model: list[int] = []
        next_seq = 1
        for op in ops:
            if op > 0:
                for _ in range(op):
                    box.append("s", TOPIC, payload_of)
                    model.append(next_seq)
                    next_seq += 1
                model = model[-8:]
            else:
                box.ack(i.id for i in box.peek(2))
                model = model[2:]
        assert [i.seq for i in box.peek(100)] == model
        assert box.depth() == len(model)
        assert box.size_bytes() == sum(len(payload_of(s)) for s in model)


# The sender, against a fake connection ---------------------------------------------------------


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


class FakeConnection:
    """Hands out message ids like paho and remembers what was sent; refuses one seq if told."""

    def __init__(self, refuse_seq: int | None = None) -> None:
        self.sent: list[tuple[int, int]] = []  # (mid, seq)
        self.threads: list[int] = []  # the thread that published each
        self.refuse_seq = refuse_seq
        self._next_mid = 1
        self._lock = threading.Lock()

    def publish(self, item: OutboxItem) -> int | None:
        if item.seq == self.refuse_seq:
            raise ValueError("topic not allowed")
        with self._lock:
            mid = self._next_mid
            self._next_mid += 1
            self.sent.append((mid, item.seq))
            self.threads.append(threading.get_ident())
            return mid

    def seqs(self) -> list[int]:
        with self._lock:
            return [seq for _, seq in self.sent]

    def mids(self) -> list[int]:
        with self._lock:
            return [mid for mid, _ in self.sent]


@contextmanager
def running_sender(
    outbox: Outbox, max_inflight: int = 100, refuse_seq: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[tuple[OutboxSender, FakeConnection]]:
    conn = FakeConnection(refuse_seq)
    sender = OutboxSender(outbox, conn.publish, max_inflight, clock=clock)
    thread = threading.Thread(target=sender.run, daemon=True)
    thread.start()
    try:
        yield sender, conn
    finally:
        sender.stop()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_sender_keeps_order_and_never_exceeds_the_window(outbox: Outbox) -> None:
    fill(outbox, 25)
    with running_sender(outbox, max_inflight=10) as (sender, conn):
        sender.connection_up()
        wait_until(lambda: len(conn.sent) == 10)
        sender.wake()
        time.sleep(0.1)
        assert conn.seqs() == list(range(1, 11))
        for mid in (1, 2, 3):
            sender.acked_mid(mid)
        wait_until(lambda: len(conn.sent) == 13)
        assert conn.seqs()[10:] == [11, 12, 13]


def test_sender_deletes_acked_messages_from_the_outbox(outbox: Outbox) -> None:
    count = ACK_BATCH * 2 + 5
    fill(outbox, count)
    with running_sender(outbox, max_inflight=1000) as (sender, conn):
        sender.connection_up()
        wait_until(lambda: len(conn.sent) == count)
        for mid in conn.mids():
            sender.acked_mid(mid)
        wait_until(lambda: outbox.depth() == 0)
        assert sender.acked == count


def test_sender_resends_unacked_messages_on_a_new_connection(outbox: Outbox) -> None:
    fill(outbox, 6)
    with running_sender(outbox) as (sender, conn):
        sender.connection_up()
        wait_until(lambda: len(conn.sent) == 6)
        sender.acked_mid(1)
        sender.acked_mid(2)
        sender.connection_down()
        sender.connection_up()
        wait_until(lambda: len(conn.sent) == 10)
        assert conn.seqs() == [1, 2, 3, 4, 5, 6, 3, 4, 5, 6]
        wait_until(lambda: outbox.depth() == 4)


def test_sender_waits_while_disconnected_then_catches_up(outbox: Outbox) -> None:
    with running_sender(outbox) as (sender, conn):
        fill(outbox, 3)
        sender.wake()
        time.sleep(0.1)
        assert conn.sent == []
        sender.connection_up()
        wait_until(lambda: conn.seqs() == [1, 2, 3])
        fill(outbox, 2)
        sender.wake()
        wait_until(lambda: conn.seqs() == [1, 2, 3, 4, 5])


class StepClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_message_after_a_quiet_spell_is_published_on_the_storing_thread_when_idle(
        outbox: Outbox) -> None:
    clock = StepClock()
    fill(outbox, 1)
    with running_sender(outbox, clock=clock) as (sender, conn):
        sender.connection_up()
        wait_until(lambda: len(conn.sent) == 1)
        sender.acked_mid(conn.mids()[0])
        wait_until(lambda: sender.acked == 1)

        fill(outbox, 1)
        sender.wake()
        assert conn.seqs() == [1, 2]  # already sent when wake returns
        assert conn.threads[1] == threading.get_ident() != conn.threads[0]

        sender.acked_mid(conn.mids()[1])
        wait_until(lambda: sender.acked == 2)
        clock.now += INLINE_GAP_S / 4   # close behind the previous one: a burst
        fill(outbox, 1)
        sender.wake()
        wait_until(lambda: len(conn.sent) == 3)
        assert conn.threads[2] == conn.threads[0]  # left to the sender thread
        wait_until(lambda: sender.inflight == 1)


def test_a_burst_is_published_by_polling_not_by_a_wake_up_per_message(
        outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sender_module, "IDLE_POLL_S", 60.0)   # a missed message would wait this
    clock = StepClock()
    count = 100
    acked = 0
    with running_sender(outbox, clock=clock) as (sender, conn):
        sender.connection_up()
        wait_until(lambda: sender.rounds > 0)
        before, started = sender.rounds, time.monotonic()
        for _ in range(count):
            clock.now += INLINE_GAP_S / 10   # close together: a burst
            fill(outbox, 1)
            sender.wake()
            for mid in conn.mids()[acked:]:
                sender.acked_mid(mid)
                acked += 1
            time.sleep(0.001)   # room for a sender woken per message to run each time
        wait_until(lambda: len(conn.sent) == count)
        assert conn.seqs() == list(range(1, count + 1))
        # A look every BURST_POLL_S while it lasted, however slow the host: not one per message.
        polls = (time.monotonic() - started) / sender_module.BURST_POLL_S
        assert sender.rounds - before <= min(count // 2, polls + sender_module.BURST_RUN + 5)
        clock.now += 1.0   # the burst is over: the last message still goes at once
        fill(outbox, 1)
        sender.wake()
        wait_until(lambda: len(conn.sent) == count + 1)
        wait_until(lambda: not sender.polling)
        for mid in conn.mids()[acked:]:
            sender.acked_mid(mid)
        wait_until(lambda: outbox.depth() == 0)


def test_a_message_or_two_close_together_is_no_burst(outbox: Outbox) -> None:
    # Two live pipelines may store results a few milliseconds apart now and then: each is still
    # published at once, and the sender does not start polling for them.
    clock = StepClock()
    with running_sender(outbox, clock=clock) as (sender, conn):

        def sent(count: int) -> Callable[[], bool]:
            return lambda: len(conn.sent) == count

        sender.connection_up()
        for round_ in range(5):
            clock.now += 1.0
            for _ in range(sender_module.BURST_RUN - 1):
                clock.now += INLINE_GAP_S / 10
                fill(outbox, 1)
                sender.wake()
            wait_until(sent((round_ + 1) * (sender_module.BURST_RUN - 1)))
            for mid in conn.mids():
                sender.acked_mid(mid)
            wait_until(lambda: sender.inflight == 0)   # the sender ran a round since
            assert not sender.polling


def test_flush_publishes_what_a_burst_left_for_later_on_the_calling_thread(
        outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    # A message sent around the outbox (health, a reply) follows the results stored before it.
    monkeypatch.setattr(sender_module, "BURST_POLL_S", 60.0)   # the sender would look this late
    clock = StepClock()
    with running_sender(outbox, clock=clock) as (sender, conn):
        sender.connection_up()
        for _ in range(sender_module.BURST_RUN + 1):   # close together: a burst, and it polls
            clock.now += INLINE_GAP_S / 10
            fill(outbox, 1)
            sender.wake()
        wait_until(lambda: sender.polling)
        sender.flush()
        stored = sender_module.BURST_RUN + 1
        assert conn.seqs() == list(range(1, stored + 1))
        clock.now += INLINE_GAP_S / 10
        fill(outbox, 2)
        sender.wake()   # polling: nobody is woken, the sender looks again in a minute
        sender.flush()
        assert conn.seqs() == list(range(1, stored + 3))


def test_a_message_stored_while_down_goes_once_the_connection_is_up(outbox: Outbox) -> None:
    clock = StepClock()
    with running_sender(outbox, clock=clock) as (sender, conn):
        fill(outbox, 1)
        sender.wake()
        time.sleep(0.1)
        assert conn.sent == []  # down: nothing sent, by anyone
        sender.connection_up()
        wait_until(lambda: conn.seqs() == [1])
        clock.now += 1.0
        fill(outbox, 1)
        sender.wake()  # after the one still in flight: order is kept
        wait_until(lambda: conn.seqs() == [1, 2])


def test_sender_ignores_acks_it_cannot_match(outbox: Outbox) -> None:
    fill(outbox, 2)
    with running_sender(outbox) as (sender, conn):
        sender.connection_up()
        wait_until(lambda: len(conn.sent) == 2)
        sender.connection_down()
        sender.connection_up()
        wait_until(lambda: len(conn.sent) == 4)
        sender.acked_mid(3)  # seq 1, sent again on the new connection
        sender.acked_mid(99)  # nobody's
        wait_until(lambda: outbox.depth() == 1)
        assert [i.seq for i in outbox.peek(10)] == [2]


def test_sender_drops_a_message_the_client_cannot_send(outbox: Outbox) -> None:
    fill(outbox, 3)
    with running_sender(outbox, refuse_seq=2) as (sender, conn):
        sender.connection_up()
        wait_until(lambda: len(conn.sent) == 2)
        for mid in conn.mids():
            sender.acked_mid(mid)
        wait_until(lambda: outbox.depth() == 0)
        assert conn.seqs() == [1, 3]
        assert sender.rejected == 1


def test_sender_drops_a_message_the_broker_refuses(outbox: Outbox) -> None:
    fill(outbox, 2)
    with running_sender(outbox) as (sender, conn):
        sender.connection_up()
        wait_until(lambda: len(conn.sent) == 2)
        sender.acked_mid(1, refused=True)
        sender.acked_mid(2)
        wait_until(lambda: outbox.depth() == 0)
        assert (sender.acked, sender.rejected) == (2, 1)


class RefusingDisk:
    """The outbox's real connection, except that storing a message fails while ``full``."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db, self.full = db, False

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if self.full and sql.startswith("INSERT INTO outbox"):
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)


def test_a_refused_write_spends_its_seq_and_leaves_the_outbox_as_it_was(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_messages=3) as box:
        disk = RefusingDisk(box._db)
        box._db = disk  # type: ignore[assignment]
        assert [box.append("s", "t", lambda seq: b"x" * 10) for _ in range(3)] == [1, 2, 3]
        disk.full = True
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            box.append("s", "t", lambda seq: b"x" * 10)  # would first drop the oldest to fit
        assert (box.depth(), box.dropped) == (3, 0)
        assert [item.seq for item in box.peek(10)] == [1, 2, 3]
        disk.full = False
        assert box.append("s", "t", lambda seq: b"x" * 10) == 5  # the gap shows the loss
        assert [item.seq for item in box.peek(10)] == [2, 3, 5] and box.dropped == 1


def test_a_really_full_database_reports_itself_and_recovers(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_messages=3) as box:
        for _ in range(3):
            box.append("s", "t", lambda seq: b"x" * 100)
        pages = box._db.execute("PRAGMA page_count").fetchone()[0]
        box._db.execute(f"PRAGMA max_page_count={pages}")  # the disk is full now
        with pytest.raises(sqlite3.OperationalError, match="full"):
            box.append("s", "t", lambda seq: b"y" * 200_000)
        assert not box._db.in_transaction
        assert (box.depth(), box.dropped) == (3, 0)
        box._db.execute("PRAGMA max_page_count=1073741823")
        assert box.append("s", "t", lambda seq: b"z") == 5
        assert [item.seq for item in box.peek(10)] == [2, 3, 5] and box.dropped == 1
