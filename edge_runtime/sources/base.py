"""What every input source shares: the interface, its options and its error type."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgeError
from edge_runtime.frames import Frame


class SourceError(EdgeError):
    """A source cannot be parsed, opened or read. The message is one line naming the source."""


@dataclass(slots=True)
class WindowSpec:
    """How sensor readings are grouped: ``size`` readings of ``channels`` values per window.

    A new window starts every ``stride`` readings; ``stride`` 0 means ``size`` (no overlap).
    """

    size: int
    stride: int = 0
    channels: int = 1

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"window size must be at least 1, got {self.size}")
        if self.stride < 0:
            raise ValueError(f"window stride must not be negative, got {self.stride}")
        if self.channels < 1:
            raise ValueError(f"window channels must be at least 1, got {self.channels}")
        if self.stride == 0:
            self.stride = self.size


@dataclass(slots=True)
class SourceOptions:
    """Settings a source may use. ``fps`` paces files; ``base_dir`` anchors relative paths.

    ``target`` is the model's input (width, height): JPEG frames are decoded at a reduced scale
    when it is much smaller than the frame, and a camera without a requested size is asked for
    the mode closest to it. ``decode`` is the config's choice (see ``PipelineConfig.decode``):
    ``auto``, ``full`` (software, full scale), or a hardware H.264 decoder; ``hw_decoder`` is
    the one the bundle's profile names for ``auto``. ``decode_threads`` is FFmpeg's thread count
    for software video decoding; None (auto): one for files, FFmpeg's own for live streams.
    """

    fps: float | None = None
    loop: bool = False
    width: int | None = None
    height: int | None = None
    window: WindowSpec | None = None
    base_dir: Path | None = None
    target: tuple[int, int] | None = None
    decode: str = "auto"
    hw_decoder: str | None = None
    decode_threads: int | None = None

    def __post_init__(self) -> None:
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        for name in ("width", "height", "decode_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")


class Source(ABC):
    """One input. ``read`` returns the next frame, or None once a finite source has ended.

    ``live`` sources (cameras, streams, paced files) are read with the newest-frame policy;
    ``retry_on_error`` ones (devices and streams) are reopened after a failure.
    """

    kind: str = "source"
    live: bool = False
    retry_on_error: bool = False

    def __init__(self, options: SourceOptions | None = None) -> None:
        self.options = options or SourceOptions()
        self.unreadable = 0
        # How frames are decoded, for status: the decoder, the JPEG scale, a fallback's reason.
        self.decoding: dict[str, object] = {"decoder": "software"}
        self._next_index = 0
        self._interrupted = threading.Event()

    @classmethod
    def from_spec(cls, spec: str, options: SourceOptions) -> Source | None:
        """The source ``spec`` names if this kind claims it, else None. Does not open it."""
        return None

    @abstractmethod
    def open(self) -> None:
        """Acquire the device or file; raise SourceError naming it when that fails."""

    @abstractmethod
    def read(self) -> Frame | None:
        """The next frame; None when the source has ended; SourceError on a failed live read."""

    @abstractmethod
    def close(self) -> None:
        """Release the device or file. Safe to call more than once."""

    @abstractmethod
    def describe(self) -> str:
        """A short human description, e.g. ``camera /dev/video0``."""

    def interrupt(self) -> None:
        """Wake any wait inside ``read`` so a shutdown is prompt. Called from another thread."""
        self._interrupted.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupted.is_set()

    def _make_frame(self, data: np.ndarray, ref: str | None = None,
                    label: str | None = None) -> Frame:
        index = self._next_index
        self._next_index += 1
        return Frame(index=index, ref=str(index) if ref is None else ref,
                     captured_at=time.time(), data=data, label=label)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class Pacer:
    """Releases one tick per ``1 / fps`` seconds; a late consumer is not paid back in a burst."""

    def __init__(self, fps: float | None, interrupted: threading.Event) -> None:
        self.period = 1.0 / fps if fps else 0.0
        self._interrupted = interrupted
        self._due: float | None = None

    def wait(self) -> bool:
        """Sleep until the next tick. False if interrupted meanwhile."""
        if self.period <= 0:
            return not self._interrupted.is_set()
        now = time.monotonic()
        if self._due is None or self._due < now - self.period:
            self._due = now
        delay = self._due - now
        if delay > 0 and self._interrupted.wait(delay):
            return False
        self._due += self.period
        return not self._interrupted.is_set()


def local_path(text: str, options: SourceOptions) -> Path:
    """A user-given path, with ``~`` expanded and relative paths anchored at ``base_dir``."""
    path = Path(text).expanduser()
    if not path.is_absolute() and options.base_dir is not None:
        path = options.base_dir / path
    return path
