"""The one error base class of both CLIs.

An :class:`EdgeError` is bad usage, bad input or a refused operation, never a bug: its message is
the one line ``edge-runtime`` and ``edge-convert`` print (``error: …``, exit 2). Anything else that
escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Bad usage or input; ``str()`` is one line naming what is wrong."""

    def one_line(self) -> str:
        return " ".join(str(self).split())
