"""JSON read from a bundle, bounded: a manifest or a signature is small and shallow, so a huge or
deeply nested one is refused with one line before the parser sees it (Python's parser would
hold it all in memory, or end in a RecursionError)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from edge_runtime.errors import EdgeError

MAX_JSON_BYTES = 4 * 2**20
MAX_JSON_DEPTH = 64
# A string literal (skipped whole, so brackets inside it do not count) or a bracket.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class JsonLimitError(EdgeError):
    """A JSON document too large, too deep or not valid; one line naming which file."""


def read_json(path: Path, what: str, *, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH) -> object:
    """The JSON in ``path``, read only if it is a regular file within the limits.

    FileNotFoundError passes through, for callers that say "not a bundle" instead.
    """
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    return loads(data, what, max_bytes=max_bytes, max_depth=max_depth)


def loads(data: bytes, what: str, *, max_bytes: int = MAX_JSON_BYTES,
          max_depth: int = MAX_JSON_DEPTH) -> object:
    if len(data) > max_bytes:
        raise JsonLimitError(f"{what} is over the {max_bytes}-byte limit")
    depth = nesting_depth(data)
    if depth > max_depth:
        raise JsonLimitError(f"{what} is nested more than {max_depth} levels deep")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonLimitError(f"{what} is not valid JSON ({exc})") from None


def nesting_depth(data: bytes) -> int:
    """The deepest bracket nesting of ``data``, strings skipped; linear, no recursion."""
    deepest = depth = 0
    for match in _TOKENS.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest
