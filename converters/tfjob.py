"""What the TensorFlow-side job modules share: the one-line error and the progress lines.

``converters.child`` runs as ``__main__``; the job modules import these from here so that an
error they raise is the very class the child's ``main`` catches.
"""

from __future__ import annotations

import os
import sys


class JobError(Exception):
    """A failure worth one line to the user."""


def progress(label: str, done: int, total: int) -> None:
    """A progress line the parent relays (see ``converters.jobs.PROGRESS``)."""
    if not os.environ.get("EDGE_PROGRESS_TTY") and done < total and done % max(1, total // 4):
        return
    width = 30
    filled = int(width * done / max(1, total))
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r  {label:<22} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}")
    sys.stderr.flush()


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    for marker in ("error: ", "Error: "):
        if marker in text and len(text) > 200:
            text = text[text.index(marker):]
    return (text[:300] + "…") if len(text) > 300 else (text or type(exc).__name__)
