"""``seq`` numbers reserved ahead, in a small file beside the outbox.

The outbox database holds each stream's last ``seq``; if the database is lost (corrupt and set
aside, emptied, deleted), numbering must not start again at 1, or a subscriber would take new
results for ones it already has. So before the outbox gives a number beyond the mark, the mark is
moved :data:`RESERVE` numbers ahead and made durable (written aside, synced, renamed): one small
write per :data:`RESERVE` results. A lost database then continues after the mark, and the gap
shows that something was lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE = 1000


class SeqMarks:
    """The highest ``seq`` each stream may have given, as recorded in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._marks = self._load()

    def mark(self, stream: str) -> int:
        return self._marks.get(stream, 0)

    def streams(self) -> dict[str, int]:
        return dict(self._marks)

    def covers(self, stream: str, seq: int) -> bool:
        return seq <= self._marks.get(stream, 0)

    def reserve(self, stream: str, seq: int) -> None:
        """Move the mark of ``stream`` to cover ``seq`` and the next numbers; durable on return.

        Raises OSError when the file cannot be written (the mark stays where it was).
        """
        marks = {**self._marks, stream: seq + RESERVE - 1}
        _write_durably(self.path, json.dumps(marks, sort_keys=True).encode())
        self._marks = marks

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("seq marks %s unreadable (%s): numbering relies on the outbox alone",
                        self.path, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): int(v) for k, v in data.items() if isinstance(v, int) and v > 0}


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # the rename itself, durable where the platform allows
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
