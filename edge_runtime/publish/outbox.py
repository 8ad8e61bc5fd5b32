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

One connection serves all threads behind a lock: ``append`` runs on the pipeline thread,
``peek`` and ``ack`` on the MQTT sender, and every call is a short transaction.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
CACHE_KIB = 512
WAL_SIZE_LIMIT = 16 * 2**20
_SQL_PARAMS_PER_QUERY = 500
_DROP_LOG_EVERY = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS streams (
    stream TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
"""


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
        self._lock = threading.Lock()
        self._db = _open(self.path, mode)
        self._depth, self._bytes = self._count()
        rows = self._db.execute("SELECT stream, last_seq FROM streams").fetchall()
        self._last_seq: dict[str, int] = {str(stream): int(seq) for stream, seq in rows}

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
        stored shows the gap. Returns the ``seq`` given.
        """
        if qos not in (0, 1, 2):
            raise ValueError(f"MQTT QoS must be 0, 1 or 2, got {qos}")
        with self._lock:
            seq = self._last_seq.get(stream, 0) + 1
            payload = build(seq)
            counts = (self._depth, self._bytes)
            try:
                with self._transaction():
                    made_room = self._make_room(len(payload))
                    self._db.execute(
                        "INSERT INTO streams (stream, last_seq) VALUES (?, ?) "
                        "ON CONFLICT(stream) DO UPDATE SET last_seq = excluded.last_seq",
                        (stream, seq),
                    )
                    self._db.execute(
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
        """Up to ``limit`` messages with an id above ``after_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
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
        with self._lock, self._transaction():
            for chunk in _chunks(wanted, _SQL_PARAMS_PER_QUERY):
                marks = ",".join("?" * len(chunk))
                sizes = self._db.execute(
                    f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING length(payload)", chunk
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
            self._db.close()

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

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _count(self) -> tuple[int, int]:
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM outbox")
        depth, size = row.fetchone()
        return int(depth), int(size)

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
        sizes = self._db.execute(
            "DELETE FROM outbox WHERE id <= ? RETURNING length(payload)", (last_id,)
        ).fetchall()
        self._forget(sizes)
        return len(sizes)

    def _last_id_to_drop(self, excess_rows: int, excess_bytes: int) -> int | None:
        last_id: int | None = None
        freed_rows, freed_bytes = 0, 0
        while freed_rows < excess_rows or freed_bytes < excess_bytes:
            batch = self._db.execute(
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


class _Transaction:
    """BEGIN … COMMIT, or ROLLBACK when the body or the COMMIT raises.

    SQLite may have rolled back by itself already (a full disk does), and a COMMIT refused as
    busy leaves the transaction open: either way the connection ends outside any transaction,
    and the error that caused it is the one raised."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")


def _chunks(values: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _open(path: Path, synchronous: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _connect(path, synchronous)
    except sqlite3.DatabaseError as exc:
        moved = _set_aside(path)
        log.error("outbox %s is unreadable (%s): moved to %s, starting empty", path, exc, moved)
        return _connect(path, synchronous)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    # Autocommit mode: transactions are explicit, so each append/ack is exactly one commit.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("outbox %s: this filesystem cannot do WAL (journal mode %s); a reader "
                        "can now block writes", path, mode)
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        # A queue reads little back: a small page cache keeps the daemon's memory flat on small
        # boards when a backlog builds up (SQLite's default is 2 MiB per connection).
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("SELECT COUNT(*) FROM outbox").fetchone()
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


def _set_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{path}{suffix}")
        if part.exists():
            part.replace(Path(f"{target}{suffix}"))
    return target
