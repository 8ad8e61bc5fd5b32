"""Where the daemon keeps its state on a board."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """``/var/lib/edge-runtime`` as root (the installed service), else the user's state dir."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/edge-runtime")
    return Path.home() / ".local" / "state" / "edge-runtime"
