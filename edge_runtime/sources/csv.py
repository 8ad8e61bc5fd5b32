"""Sensor readings from a CSV file: one reading per row, an optional header row skipped."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from edge_runtime.frames import Frame
from edge_runtime.sources.base import Pacer, SourceError, SourceOptions, local_path
from edge_runtime.sources.window import WindowedSource, parse_numbers

PREFIX = "csv:"


def _is_time_column(name: str) -> bool:
    name = name.strip().strip("\"'").lower()
    return name in ("t", "ts") or name.startswith("time")


class CsvSource(WindowedSource):
    """Rows of numbers in file order; a leading ``timestamp``/``time`` column is not a channel."""

    kind = "csv"

    def __init__(self, path: Path, options: SourceOptions | None = None) -> None:
        super().__init__(options)
        self.path = path
        self.live = self.options.fps is not None
        self._pacer = Pacer(self.options.fps, self._interrupted)
        self._file: TextIO | None = None
        self._first_row = True
        self._skip_columns = 0
        self._rows_this_pass = 0

    @classmethod
    def from_spec(cls, spec: str, options: SourceOptions) -> CsvSource | None:
        if spec.lower().startswith(PREFIX):
            text = spec[len(PREFIX):]
            if text.startswith("//"):
                text = text[2:]
            path = local_path(text, options)
            if not path.is_file():
                raise SourceError(f"source {spec!r}: no such file {path}")
            return cls(path, options)
        path = local_path(spec, options)
        return cls(path, options) if path.suffix.lower() == ".csv" and path.is_file() else None

    def open(self) -> None:
        self.close()
        try:
            self._file = self.path.open(encoding="utf-8", errors="replace", newline="")
        except OSError as exc:
            raise SourceError(f"csv {self.path}: cannot open ({exc.strerror})") from exc
        self._first_row = True
        self._rows_this_pass = 0

    def read(self) -> Frame | None:
        frame = super().read()
        if frame is None or not self._pacer.wait():
            return None
        frame.captured_at = time.time()
        return frame

    def _read_readings(self) -> list[Sequence[float]] | None:
        while self._file is not None:
            line = self._file.readline()
            if not line:
                if not self._restart():
                    return None
                continue
            values = self._parse_row(line) if line.strip() else None
            if values is not None:
                return [values]
        return None

    def _parse_row(self, line: str) -> list[float] | None:
        first, self._first_row = self._first_row, False
        try:
            values = parse_numbers(line.replace('"', ""))
        except ValueError:
            if not first:
                raise
            if _is_time_column(line.split(",", 1)[0]):
                self._skip_columns = 1
            return None  # the header: not a reading, not an error
        self._rows_this_pass += 1
        return values[self._skip_columns:]

    def _restart(self) -> bool:
        # Only start over when the pass produced rows, or a file of headers would spin forever.
        if not self.options.loop or self._rows_this_pass == 0:
            return False
        self.open()
        self.windower.reset()
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None

    def describe(self) -> str:
        return f"csv {self.path}"
