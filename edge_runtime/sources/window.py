"""Sensor readings → fixed-size windows, and the base of every sensor source."""

from __future__ import annotations

import logging
import math
import re
from abc import abstractmethod
from collections import deque
from collections.abc import Iterable, Sequence

import numpy as np

from edge_runtime.frames import Frame
from edge_runtime.sources.base import Source, SourceOptions, WindowSpec

log = logging.getLogger(__name__)

_SEPARATORS = re.compile(r"[,;\s]+")


def parse_numbers(line: str) -> list[float]:
    """Numbers separated by commas, semicolons or spaces; ``name:value`` tokens keep the value.

    Raises ValueError naming the first bad token. Non-finite values count as bad.
    """
    values = []
    for token in _SEPARATORS.split(line.strip()):
        if not token:
            continue
        text = token.rsplit(":", 1)[-1].rsplit("=", 1)[-1]
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"not a number: {token!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {token!r}")
        values.append(value)
    if not values:
        raise ValueError("no values")
    return values


class Windower:
    """Groups readings into windows of ``size`` readings, starting a new one every ``stride``.

    Without a spec every reading is a window of one, and the channel count is taken from the
    first reading.
    """

    def __init__(self, spec: WindowSpec | None = None) -> None:
        self.size = spec.size if spec else 1
        self.stride = spec.stride if spec else 1
        self.channels: int | None = spec.channels if spec else None
        self._buffer: deque[tuple[int, Sequence[float]]] = deque(maxlen=self.size)
        self._next_index = 0
        self._next_start = 0

    def push(self, reading: Sequence[float]) -> tuple[int, np.ndarray] | None:
        """Add one reading. Returns ``(index of its first reading, window)`` when one completes.

        Raises ValueError (and keeps no trace of the reading) when its channel count is wrong.
        """
        if self.channels is None:
            self.channels = len(reading)
        if len(reading) != self.channels:
            raise ValueError(f"reading has {len(reading)} values; expected {self.channels}")
        index = self._next_index
        self._next_index += 1
        if index < self._next_start:
            return None  # stride > size: readings between windows are not used
        self._buffer.append((index, reading))
        if len(self._buffer) < self.size:
            return None
        start = self._buffer[0][0]
        window = np.asarray([values for _, values in self._buffer], dtype=np.float32)
        self._next_start = start + self.stride
        while self._buffer and self._buffer[0][0] < self._next_start:
            self._buffer.popleft()
        return start, window

    def reset(self) -> None:
        """Forget buffered readings and count from zero again (a looped file starts over)."""
        self._buffer.clear()
        self._next_index = 0
        self._next_start = 0


class WindowedSource(Source):
    """A source of sensor readings; each completed window becomes one frame."""

    def __init__(self, options: SourceOptions | None = None) -> None:
        super().__init__(options)
        self.windower = Windower(self.options.window)
        self._warned = False
        # One record may hold several readings and so complete several windows.
        self._pending: deque[Frame] = deque()

    @abstractmethod
    def _read_readings(self) -> Iterable[Sequence[float]] | None:
        """The readings of the next raw record (line or row); None at the end of the source.

        Raises ValueError for a malformed record (counted and skipped).
        """

    def read(self) -> Frame | None:
        while not self._pending:
            try:
                readings = self._read_readings()
            except ValueError as exc:
                self._skip(exc)
                continue
            if readings is None:
                return None
            self._push_all(readings)
        return self._pending.popleft()

    def _push_all(self, readings: Iterable[Sequence[float]]) -> None:
        for reading in readings:
            try:
                done = self.windower.push(reading)
            except ValueError as exc:
                self._skip(exc)
                continue
            if done is not None:
                self._pending.append(self._make_frame(done[1], ref=str(done[0])))

    def _skip(self, error: ValueError) -> None:
        self.unreadable += 1
        if not self._warned:
            self._warned = True
            log.warning("%s: skipping malformed reading (%s); further ones are only counted",
                        self.describe(), error)
