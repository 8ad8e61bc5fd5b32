"""The durable outbox: every result is written here before it goes to the broker.

A row leaves the outbox only when the broker acknowledged it, so a broker restart, a network cut
or a killed daemon loses nothing: whatever is still on disk is sent again (duplicates are
possible and visible by ``seq``). The outbox also owns the ``seq`` counter of every stream, in
the same transaction as the row it numbers, so numbering survives restarts and never repeats.

Durability: SQLite in WAL mode with ``synchronous=NORMAL``. A committed transaction survives a
killed process (the WAL is in the operating system's hands once the commit returns). On a power
cut, the transactions committed since the last WAL checkpoint may be lost, the database itself
stays consistent: acks that are lost give duplicates, appends that are lost take their ``seq``
numbers with them, which may then be given again. ``synchronous="FULL"`` syncs every commit and
closes that window at the price of one flash write per result.

Bounds: at most ``max_messages`` rows and ``max_bytes`` payload bytes; beyond that the oldest
rows are dropped and counted in ``dropped``.

A database that cannot be opened is never thrown away for that alone. Only a corrupt one (SQLite
says "not a database" or "malformed") is moved aside, and numbering then continues past the
highest ``seq`` ever given (:mod:`edge_runtime.publish.seqmarks`). A read-only, locked or full
one is kept as it is: ``problem`` says why, appends raise :class:`OutboxUnavailable` and every
use tries to open it again (at most once a second) until it works.

One connection serves all threads behind a lock: ``append`` runs on the pipeline thread,
``peek`` and ``ack`` on the MQTT sender, and every call is a short transaction.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from edge_runtime.publish.outboxdb import Transaction, open_db
from edge_runtime.publish.seqmarks import SeqMarks

log = logging.getLogger(__name__)

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
BUSY_TIMEOUT_S = 5.0
REOPEN_INTERVAL_S = 1.0
_SQL_PARAMS_PER_QUERY = 500
_DROP_LOG_EVERY = 10_000


class OutboxUnavailable(sqlite3.OperationalError):
    """The outbox database cannot be used now (``Outbox.problem`` says why); nothing was stored
    and no ``seq`` was given."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    stream: str
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """A bounded, ordered, on-disk queue of messages waiting for a broker acknowledgement."""

    def __init__(
        self,
        path: Path,
        max_messages: int = 100_000,
        max_bytes: int = 256 * 2**20,
        synchronous: str = "NORMAL",
        busy_timeout_s: float = BUSY_TIMEOUT_S,
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"outbox max_messages must be at least 1, got {max_messages}")
        if max_bytes < 1:
            raise ValueError(f"outbox max_bytes must be at least 1, got {max_bytes}")
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            allowed = ", ".join(SYNCHRONOUS_MODES)
            raise ValueError(f"outbox synchronous must be one of {allowed}, got {synchronous!r}")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.dropped = 0
        self.problem: str | None = None
        self._synchronous = mode
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._marks = SeqMarks(self.path.with_name(f"{self.path.name}.seq"))
        self._db: sqlite3.Connection | None = None
        self._next_open = 0.0
        self._depth, self._bytes = 0, 0
        self._last_seq: dict[str, int] = {}
        self._ready()

    def append(
        self,
        stream: str,
        topic: str,
        build: Callable[[int], bytes],
        qos: int = 1,
        retain: bool = False,
    ) -> int:
        """Number the next message of ``stream``, build it and store it in one transaction.

        ``build(seq)`` makes the payload; if it raises, nothing is stored and the number is not
        used. If the database refuses the write (disk full, I/O error, locked past the busy
        timeout), the sqlite3 error propagates and the number is spent, so the next message
        stored shows the gap. While the database cannot be opened, or the seq marks cannot be
        written, :class:`OutboxUnavailable` (an ``sqlite3.OperationalError``) is raised and no
        number is given. Returns the ``seq`` given.
        """
        if qos not in (0, 1, 2):
            raise ValueError(f"MQTT QoS must be 0, 1 or 2, got {qos}")
        with self._lock:
            if not self._ready():
                raise OutboxUnavailable(self.problem)
            seq = self._last_seq.get(stream, 0) + 1
            payload = build(seq)
            self._reserve(stream, seq)
            counts = (self._depth, self._bytes)
            try:
                with self._transaction():
                    made_room = self._make_room(len(payload))
                    self._conn.execute(
                        "INSERT INTO streams (stream, last_seq) VALUES (?, ?) "
                        "ON CONFLICT(stream) DO UPDATE SET last_seq = excluded.last_seq",
                        (stream, seq),
                    )
                    self._conn.execute(
                        "INSERT INTO outbox (stream, seq, topic, payload, qos, retain) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (stream, seq, topic, payload, qos, int(retain)),
                    )
            except BaseException as exc:
                self._depth, self._bytes = counts  # the rows it deleted are back
                if isinstance(exc, sqlite3.Error):
                    self._last_seq[stream] = seq
                raise
            self._last_seq[stream] = seq
            self._depth += 1
            self._bytes += len(payload)
            if made_room:
                self._note_drops(made_room)
        return seq

    def peek(self, limit: int, after_id: int = 0) -> list[OutboxItem]:
        """Up to ``limit`` messages with an id above ``after_id``, oldest first (none while the
        database cannot be opened)."""
        with self._lock:
            if not self._ready():
                return []
            rows = self._conn.execute(
                "SELECT id, stream, seq, topic, payload, qos, retain FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [
            OutboxItem(id=r[0], stream=r[1], seq=r[2], topic=r[3], payload=r[4], qos=r[5],
                       retain=bool(r[6]))
            for r in rows
        ]

    def ack(self, ids: Iterable[int]) -> None:
        """Forget acknowledged messages; unknown ids (already acked or dropped) are ignored."""
        wanted = list(ids)
        if not wanted:
            return
        with self._lock:
            if not self._ready():
                raise OutboxUnavailable(self.problem)
            with self._transaction():
                for chunk in _chunks(wanted, _SQL_PARAMS_PER_QUERY):
                    marks = ",".join("?" * len(chunk))
                    sizes = self._conn.execute(
                        f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING length(payload)",
                        chunk,
                    ).fetchall()
                    self._forget(sizes)

    def depth(self) -> int:
        with self._lock:
            return self._depth

    def size_bytes(self) -> int:
        """Payload bytes held."""
        with self._lock:
            return self._bytes

    def last_seq(self, stream: str) -> int:
        """The last ``seq`` given in ``stream`` (0 before the first)."""
        with self._lock:
            return self._last_seq.get(stream, 0)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._next_open = float("inf")

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r}, depth={self._depth})"

    def _ready(self) -> bool:
        """Open the database if it is not yet; False (``problem`` set) if it cannot be now."""
        if self._db is not None:
            return True
        now = time.monotonic()
        if now < self._next_open:
            return False
        self._next_open = now + REOPEN_INTERVAL_S
        try:
            opened = open_db(self.path, self._synchronous, self._busy_timeout_s)
        except (sqlite3.Error, OSError) as exc:
            self._note_unavailable(exc)
            return False
        self._db = opened.db
        self._depth, self._bytes = opened.depth, opened.size_bytes
        self._last_seq = opened.last_seq
        self._continue_lost_numbering()
        if self.problem is not None:
            log.warning("outbox %s can be used again", self.path)
            self.problem = None
        return True

    def _note_unavailable(self, exc: BaseException) -> None:
        reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or \
            type(exc).__name__
        problem = f"outbox {self.path} cannot be opened: {reason}; kept as it is, retrying"
        if problem != self.problem:
            log.error("%s", problem)
        self.problem = problem

    def _continue_lost_numbering(self) -> None:
        """Streams the marks know and the database does not lost their numbering with an
        earlier database: continue past the highest number it may have given."""
        for stream, mark in self._marks.streams().items():
            if stream not in self._last_seq:
                self._last_seq[stream] = mark
                log.error("outbox %s has no record of stream %r, which had numbers up to %d: "
                          "its earlier results are lost; numbering continues at %d",
                          self.path, stream, mark, mark + 1)

    def _reserve(self, stream: str, seq: int) -> None:
        if self._marks.covers(stream, seq):
            return
        try:
            self._marks.reserve(stream, seq)
        except OSError as exc:
            raise OutboxUnavailable(f"cannot record seq marks in {self._marks.path}: "
                                    f"{exc.strerror or exc}") from None

    @property
    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None, "used before _ready()"
        return self._db

    def _transaction(self) -> Transaction:
        return Transaction(self._conn)

    def _forget(self, sizes: Sequence[tuple[int]]) -> None:
        self._depth -= len(sizes)
        self._bytes -= sum(size for (size,) in sizes)

    def _make_room(self, incoming: int) -> int:
        """Drop the oldest rows until one more message of ``incoming`` bytes fits the bounds;
        return how many (counted as dropped once the transaction commits)."""
        excess_rows = self._depth + 1 - self.max_messages
        excess_bytes = self._bytes + incoming - self.max_bytes
        if excess_rows <= 0 and excess_bytes <= 0:
            return 0
        last_id = self._last_id_to_drop(excess_rows, excess_bytes)
        if last_id is None:
            return 0
        sizes = self._conn.execute(
            "DELETE FROM outbox WHERE id <= ? RETURNING length(payload)", (last_id,)
        ).fetchall()
        self._forget(sizes)
        return len(sizes)

    def _last_id_to_drop(self, excess_rows: int, excess_bytes: int) -> int | None:
        last_id: int | None = None
        freed_rows, freed_bytes = 0, 0
        while freed_rows < excess_rows or freed_bytes < excess_bytes:
            batch = self._conn.execute(
                "SELECT id, length(payload) FROM outbox WHERE id > ? ORDER BY id LIMIT 256",
                (last_id or 0,),
            ).fetchall()
            if not batch:
                break
            for row_id, size in batch:
                last_id = row_id
                freed_rows, freed_bytes = freed_rows + 1, freed_bytes + size
                if freed_rows >= excess_rows and freed_bytes >= excess_bytes:
                    break
        return last_id

    def _note_drops(self, count: int) -> None:
        before = self.dropped
        self.dropped += count
        if before == 0 or before // _DROP_LOG_EVERY != self.dropped // _DROP_LOG_EVERY:
            log.warning(
                "outbox full (%d messages, %d bytes allowed): dropped the oldest, %d so far",
                self.max_messages, self.max_bytes, self.dropped,
            )


def _chunks(values: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
