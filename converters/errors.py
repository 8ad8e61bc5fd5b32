"""Errors the converter CLI turns into a one-line ``error: ...`` and an exit code."""

from __future__ import annotations

from edge_runtime.errors import EdgeError


class ConvertError(EdgeError):
    """Bad usage or bad input (model, data, profile): exit code 2, one-line message."""

    exit_code: int = 2
