"""Sensor readings from a serial port: lines of comma- or space-separated numbers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from edge_runtime.sources.base import SourceError, SourceOptions
from edge_runtime.sources.window import WindowedSource, parse_numbers

DEFAULT_BAUD = 115200
READ_TIMEOUT_S = 0.2
MAX_LINE_BYTES = 4096


def parse_serial_spec(spec: str) -> tuple[str, int]:
    """``serial:///dev/ttyUSB0?baud=115200`` → ``("/dev/ttyUSB0", 115200)``."""
    parts = urlsplit(spec)
    port = parts.netloc + parts.path
    if not port:
        raise SourceError(f"source {spec!r}: no serial port given")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"baud", "baudrate"})
    if unknown:
        raise SourceError(f"source {spec!r}: unknown option {unknown[0]!r} (expected baud)")
    text = (query.get("baud") or query.get("baudrate") or [str(DEFAULT_BAUD)])[-1]
    if not text.isdigit() or int(text) <= 0:
        raise SourceError(f"source {spec!r}: baud must be a positive integer, got {text!r}")
    return port, int(text)


class SerialSource(WindowedSource):
    """A serial device streaming readings; unplugging it is a read error, so capture reopens."""

    kind = "serial"
    live = True
    retry_on_error = True

    def __init__(self, port: str, baud: int = DEFAULT_BAUD,
                 options: SourceOptions | None = None) -> None:
        super().__init__(options)
        self.port = port
        self.baud = baud
        self._serial: Any = None
        self._partial = b""
        self._discard_first_line = True

    @classmethod
    def from_spec(cls, spec: str, options: SourceOptions) -> SerialSource | None:
        if not spec.lower().startswith("serial://"):
            return None
        port, baud = parse_serial_spec(spec)
        return cls(port, baud, options)

    def open(self) -> None:
        self.close()
        try:
            import serial
        except ImportError as exc:
            raise SourceError("pyserial is not installed (pip install pyserial)") from exc
        if os.name == "posix" and not os.path.exists(self.port):
            raise SourceError(f"serial {self.port} not found")
        try:
            self._serial = serial.Serial(self.port, self.baud, timeout=READ_TIMEOUT_S)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise SourceError(f"serial {self.port}: cannot open ({exc})") from exc
        self._partial = b""
        # Opening mid-transmission usually lands inside a line.
        self._discard_first_line = True

    def _read_readings(self) -> Sequence[Sequence[float]] | None:
        while not self.interrupted:
            line = self._read_line()
            if line is None:
                continue
            if self._discard_first_line:
                self._discard_first_line = False
                continue
            text = line.decode("utf-8", errors="replace").strip()
            if text:
                return [parse_numbers(text)]
        return None

    def _read_line(self) -> bytes | None:
        """One complete line, or None when the read timed out first."""
        if self._serial is None:
            raise SourceError(f"{self.describe()}: not open")
        try:
            chunk = self._serial.readline()
        except (OSError, ValueError) as exc:  # SerialException is an OSError
            raise SourceError(f"{self.describe()}: read failed ({exc})") from exc
        self._partial += chunk
        if not self._partial.endswith(b"\n"):
            if len(self._partial) > MAX_LINE_BYTES:
                self._partial = b""
                raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
            return None
        line, self._partial = self._partial, b""
        return line

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()
        self._serial = None

    def describe(self) -> str:
        return f"serial {self.port}"
