"""One daemon per state dir: the lock names its holder and dies with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.system.statelock import StateDirBusy, StateLock

_HOLDER = """
import sys, time
from pathlib import Path
from edge_runtime.system.statelock import StateLock
StateLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    with StateLock(tmp_path):
        with pytest.raises(StateDirBusy, match=f"pid {os.getpid()}") as info:
            StateLock(tmp_path).acquire()
        assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    with StateLock(tmp_path) as again:  # released: free for the next one
        assert again.held


def test_the_lock_of_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StateDirBusy, match=f"pid {holder.pid}"):
            StateLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait(10)
    with StateLock(tmp_path) as lock:  # no stale lock file to clean up by hand
        assert lock.held
