"""One daemon per state dir: an exclusive ``flock`` on a file inside it.

Two daemons on one state dir would share the outbox (each giving the same ``seq`` to different
results) and the MQTT client id (each kicking the other off the broker). The lock is held for
the daemon's life and released by the kernel whenever the process ends, even on SIGKILL, so a
stale lock file never blocks a restart. The file holds the holder's pid, for the error message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from edge_runtime.errors import EdgeError

LOCK_NAME = "edge-runtime.lock"


class StateDirBusy(EdgeError):
    """Another process holds the state dir, or it cannot be locked at all."""


class StateLock:
    """``with StateLock(dir):`` or ``acquire()`` … ``release()``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> StateLock:
        """Take the lock now or raise :class:`StateDirBusy` naming the holder's pid."""
        if self._fd is not None:
            return self
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StateDirBusy(
                f"state dir {self.path.parent} is in use by another edge-runtime "
                f"(pid {holder or 'unknown'}); stop it or give this one its own --state-dir"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StateDirBusy(f"cannot lock state dir {self.path.parent}: "
                               f"{exc.strerror or exc}") from None
        _write_pid(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock

    def _open(self) -> int:
        flags = os.O_CLOEXEC | os.O_NOCTTY
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | flags, 0o644)
        except OSError as first:
            # A read-only state dir can still be locked through an existing file.
            try:
                return os.open(self.path, os.O_RDONLY | flags)
            except OSError:
                raise StateDirBusy(f"cannot lock state dir {self.path.parent}: "
                                   f"{first.strerror or first}") from None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _write_pid(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # opened read-only: the lock holds all the same, only the pid is not recorded


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
