"""The SQLite file under the outbox: opening it, telling corruption from a passing refusal, and
one transaction per call.

Only corruption ("not a database", "malformed") makes :func:`open_db` move the file aside and
start a fresh one. Read-only, locked (past the busy timeout), full or missing folders raise as
they are, and the file stays where it is for the next attempt.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CACHE_KIB = 512
WAL_SIZE_LIMIT = 16 * 2**20
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26

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


@dataclass(frozen=True)
class Opened:
    """An open outbox database and what it holds."""

    db: sqlite3.Connection
    depth: int
    size_bytes: int
    last_seq: dict[str, int]


def open_db(path: Path, synchronous: str, busy_timeout_s: float) -> Opened:
    """The database at ``path``; a corrupt one is moved aside and a fresh one made. Any other
    error (read-only, locked, full, missing folder) propagates and leaves the file alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size == 0:
        log.error("outbox %s is an empty file (0 bytes): whatever it held is gone", path)
    try:
        return _connect(path, synchronous, busy_timeout_s)
    except sqlite3.DatabaseError as exc:
        if not _corrupt(exc):
            raise
        moved = _set_aside(path)
        log.error("outbox %s is corrupt (%s): moved to %s, starting empty", path, exc, moved)
        return _connect(path, synchronous, busy_timeout_s)


def _corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc)
    return "file is not a database" in text or "malformed" in text


def _connect(path: Path, synchronous: str, busy_timeout_s: float) -> Opened:
    # Autocommit mode: transactions are explicit, so each append/ack is exactly one commit.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                         timeout=busy_timeout_s)
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
        # Written only when it differs: opening an existing outbox needs no write lock.
        if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        depth, size = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM outbox").fetchone()
        rows = db.execute("SELECT stream, last_seq FROM streams").fetchall()
    except sqlite3.DatabaseError:
        db.close()
        raise
    return Opened(db, int(depth), int(size), {str(stream): int(seq) for stream, seq in rows})


def _set_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{path}{suffix}")
        if part.exists():
            part.replace(Path(f"{target}{suffix}"))
    return target


class Transaction:
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
