"""Sensor readings as JSON lines on standard input (or any text stream handed in)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import TextIO

from edge_runtime.sources.base import SourceOptions
from edge_runtime.sources.window import WindowedSource, parse_numbers


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a number: {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


def parse_json_readings(line: str) -> list[list[float]]:
    """One JSON line → readings: ``3.2``, ``[x, y, z]``, ``[[x, y, z], ...]`` or ``{"values": …}``.

    A line that is not JSON may still be plain numbers (``1.0, 2.0``). Raises ValueError.
    """
    try:
        payload = json.loads(line)
    except json.JSONDecodeError:
        return [parse_numbers(line)]
    if isinstance(payload, dict):
        if "values" not in payload:
            raise ValueError("JSON object has no 'values'")
        payload = payload["values"]
    if isinstance(payload, list) and payload and all(isinstance(v, list) for v in payload):
        return [[_number(v) for v in row] for row in payload]
    if isinstance(payload, list):
        if not payload:
            raise ValueError("empty list")
        return [[_number(v) for v in payload]]
    return [[_number(payload)]]


class StdinSource(WindowedSource):
    """JSON lines from ``stream`` (standard input by default); ends at end of input."""

    kind = "stdin"

    def __init__(self, stream: TextIO | None = None, options: SourceOptions | None = None) -> None:
        super().__init__(options)
        self._given = stream
        self._stream: TextIO | None = None

    @classmethod
    def from_spec(cls, spec: str, options: SourceOptions) -> StdinSource | None:
        return cls(None, options) if spec == "-" else None

    def open(self) -> None:
        self._stream = self._given if self._given is not None else sys.stdin

    def _read_readings(self) -> Sequence[Sequence[float]] | None:
        while self._stream is not None and not self.interrupted:
            line = self._stream.readline()
            if not line:
                return None
            if line.strip():
                return parse_json_readings(line)
        return None

    def close(self) -> None:
        # Standard input belongs to the process, not to this source: leave it open.
        self._stream = None

    def describe(self) -> str:
        return "stdin"
