"""The capture stage: one thread per source, handing frames to inference without a backlog.

Live sources go through a one-slot :class:`LatestFrameSlot` (the newest frame replaces one not yet
taken, and the replaced one is counted as dropped). Files and folders go through a
:class:`LosslessHandOff` that makes the reader wait for the consumer, so every frame gets a result.
Devices and streams that fail are reopened with jittered exponential back-off.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable

from edge_runtime.frames import Frame
from edge_runtime.retry import backoff_delay
from edge_runtime.sources.base import Source, SourceError

log = logging.getLogger(__name__)

StateCallback = Callable[[str, str], None]
FrameStage = Callable[[Frame], None]   # work on a frame before it is handed over
LOSSLESS_CAPACITY = 2
STOP_JOIN_S = 0.8


class _HandOff(ABC):
    """A bounded, closable frame buffer between the capture thread and one consumer."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.dropped = 0
        self._frames: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._ended = False
        self._closed = False

    @abstractmethod
    def put(self, frame: Frame) -> bool:
        """Hand over a frame. False when the hand-off was closed (the frame is discarded)."""

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest frame held, waiting up to ``timeout`` (None: no limit); None on timeout or
        once drained."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._frames) or self._ended or self._closed,
                                timeout=None if timeout is None else max(0.0, timeout))
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._cond.notify_all()
            return frame

    def end(self) -> None:
        """No more frames will come; the consumer may still get what is held."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def close(self) -> None:
        """Refuse further frames and wake every waiter (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def drained(self) -> bool:
        with self._cond:
            return (self._ended or self._closed) and not self._frames

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)


class LatestFrameSlot(_HandOff):
    """Holds one frame; a new frame overwrites one not yet taken and counts it as dropped."""

    def __init__(self) -> None:
        super().__init__(capacity=1)

    def put(self, frame: Frame) -> bool:
        with self._cond:
            if self._closed:
                return False
            if self._frames:
                self._frames.clear()
                self.dropped += 1
            self._frames.append(frame)
            self._cond.notify_all()
            return True


class LosslessHandOff(_HandOff):
    """Holds up to ``capacity`` frames; ``put`` waits for room, so nothing is ever dropped."""

    def __init__(self, capacity: int = LOSSLESS_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        super().__init__(capacity)

    def put(self, frame: Frame) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: len(self._frames) < self.capacity or self._closed)
            if self._closed:
                return False
            self._frames.append(frame)
            self._cond.notify_all()
            return True


class Capture:
    """Reads one source on its own thread; the consumer calls :meth:`get`.

    ``on_state("degraded", reason)`` is called when the source fails and ``on_state("ok", ...)``
    when it delivers frames again. A missing camera is retried for as long as the capture runs.
    """

    def __init__(self, source: Source, *, on_state: StateCallback | None = None,
                 reopen_backoff: tuple[float, float] = (0.5, 30.0),
                 ahead: FrameStage | None = None) -> None:
        low, high = reopen_backoff
        if not 0 < low <= high:
            raise ValueError(f"reopen_backoff must be (min, max) with 0 < min <= max, "
                             f"got {reopen_backoff}")
        self.source = source
        self.error: str | None = None
        # A stage of the frame path run on this thread before the hand-off, so that it overlaps
        # the consumer's work; the pipeline gives one for files and folders only (a live source's
        # frames may be dropped, and work on them would be wasted).
        self._ahead = ahead
        self._on_state = on_state
        self._backoff_range = (float(low), float(high))
        self._handoff: _HandOff = LatestFrameSlot() if source.live else LosslessHandOff()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._random = random.Random()
        self._captured = 0
        self._reopens = 0
        self._failures = 0
        self._degraded = False

    def set_ahead(self, stage: FrameStage | None) -> None:
        """Run ``stage`` on the capture thread from the next frame on (None: no stage)."""
        self._ahead = stage

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("capture already started")
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.source.kind}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop promptly. A read stuck in a driver is left to finish on its daemon thread."""
        self._stop.set()
        self.source.interrupt()
        self._handoff.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_JOIN_S)

    def get(self, timeout: float) -> Frame | None:
        """The next frame, or None after ``timeout`` seconds or once the capture is finished."""
        return self._handoff.get(timeout)

    @property
    def finished(self) -> bool:
        """The source ended (or the capture stopped) and every frame was taken."""
        return self._handoff.drained

    @property
    def degraded(self) -> bool:
        return self._degraded

    @property
    def running(self) -> bool:
        """The capture thread is alive (it may be finishing a read after ``stop``)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stats(self) -> dict[str, int]:
        return {
            "captured": self._captured,
            "dropped": self._handoff.dropped,
            "unreadable": self.source.unreadable,
            "reopens": self._reopens,
        }

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug in a source must not take the daemon down
            log.exception("capture of %s failed", self.source.describe())
            self.error = f"{self.source.describe()}: {exc}"
        finally:
            self._close_source()
            self._handoff.end()

    def _loop(self) -> None:
        first = True
        while not self._stop.is_set():
            if not first:
                self._reopens += 1
            first = False
            error = self._open_and_pump()
            if error is None or self._stop.is_set():
                return
            self._report_failure(error)
            if not self.source.retry_on_error:
                self.error = error
                return
            if self._stop.wait(self._next_backoff()):
                return

    def _open_and_pump(self) -> str | None:
        """Open the source and pass its frames on. The failure message, or None when it ended."""
        try:
            self.source.open()
            while not self._stop.is_set():
                start = time.perf_counter()
                frame = self.source.read()
                if frame is None:
                    return None
                # What the source cost this thread per frame (decoding, or waiting for a camera).
                frame.meta["read_ms"] = (time.perf_counter() - start) * 1e3
                if not self._deliver(frame):
                    return None
            return None
        except SourceError as exc:
            return str(exc)
        except Exception as exc:  # OpenCV or a driver raising: treat like a failed read
            log.debug("%s raised", self.source.describe(), exc_info=True)
            return f"{self.source.describe()}: {type(exc).__name__}: {exc}"
        finally:
            self._close_source()

    def _deliver(self, frame: Frame) -> bool:
        self._captured += 1
        self._failures = 0
        if self._degraded:
            self._degraded = False
            log.info("%s recovered", self.source.describe())
            self._notify("ok", f"{self.source.describe()}: recovered")
        ahead = self._ahead
        if ahead is not None:
            try:
                ahead(frame)
            except Exception:  # the consumer meets the same problem and reports it
                log.debug("stage ahead of frame %s failed", frame.ref, exc_info=True)
        return self._handoff.put(frame)

    def _report_failure(self, message: str) -> None:
        if self._degraded:
            log.debug("%s", message)
            return
        self._degraded = True
        retrying = "; retrying" if self.source.retry_on_error else ""
        log.warning("%s%s", message, retrying)
        self._notify("degraded", message)

    def _next_backoff(self) -> float:
        low, high = self._backoff_range
        delay = backoff_delay(self._failures, low, high, self._random.random)
        self._failures += 1
        return delay

    def _notify(self, state: str, message: str) -> None:
        if self._on_state is None:
            return
        try:
            self._on_state(state, message)
        except Exception:
            log.exception("state callback failed")

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception:
            log.debug("closing %s failed", self.source.describe(), exc_info=True)
