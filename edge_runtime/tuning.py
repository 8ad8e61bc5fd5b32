"""Interpreter threads by measurement: which layout of the frame path gives the most results/s.

How many interpreter threads pay depends on what else each frame costs on the same cores. When
decoding a frame is cheap (a 640x480 MPEG-4 clip), two threads halve the invoke and win; when it
is expensive (720p H.264, more CPU than the invoke), the decoder and XNNPACK fight for the cores
and one thread, with decoding and inference overlapping on separate cores, wins. Where the
preprocessing runs (ahead on the capture thread, or inline on the pipeline thread) shifts the
balance again. No fixed default is right for every source and board, so the pipeline tries each
:class:`Layout` for a short window on the real source, in the order A B … Z Z … B A (a steady
drift of the machine's speed then weighs on every layout alike), and keeps the one that served
the most results per second; it measures again periodically and after a model swap. Every frame
is still served while it measures.

This module holds the decision only (no threads, no interpreter): the pipeline feeds it one
observation per frame and applies the layout it asks for between two frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_runtime.system.sysinfo import cpu_count

if TYPE_CHECKING:
    from edge_runtime.model import LoadedModel

SETTLE_FRAMES = 2          # frames left out after a switch: a new interpreter's first invokes
WINDOW_FRAMES = 8          # a measuring window holds at least this many results…
WINDOW_S = 0.3             # …and lasts at least this long
RETUNE_S = 600.0           # measure again this often: the load on the board changes
TIE = 0.03                 # rates this close count as equal; the lower latency then wins


@dataclass(frozen=True, slots=True)
class Layout:
    """How a pipeline runs its frame path: interpreter threads, and whether preprocessing runs
    ahead on the capture thread (``ahead``) or inline on the pipeline thread."""

    threads: int
    ahead: bool

    def describe(self) -> str:
        where = "on the capture thread" if self.ahead else "inline"
        return f"{self.threads} interpreter thread(s), preprocessing {where}"


def layouts(max_threads: int, images: bool) -> list[Layout]:
    """Every layout worth trying on ``max_threads`` usable cores (preprocessing placement only
    matters for images)."""
    placements = (False, True) if images else (False,)
    return [Layout(n, ahead) for n in range(1, max(1, max_threads) + 1) for ahead in placements]


@dataclass
class Measured:
    """What one layout gave over its windows."""

    layout: Layout
    frames: int = 0
    seconds: float = 0.0
    invoke_ms: float = 0.0      # sums over the frames
    preprocess_ms: float = 0.0
    read_ms: float = 0.0

    @property
    def per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def latency_ms(self) -> float:
        """Mean invoke plus inline preprocessing: what a frame waits for on the pipeline thread."""
        inline = 0.0 if self.layout.ahead else self.preprocess_ms
        return (self.invoke_ms + inline) / self.frames if self.frames else 0.0

    def summary(self) -> dict[str, Any]:
        n = max(1, self.frames)
        return {"threads": self.layout.threads, "ahead": self.layout.ahead,
                "results_per_s": round(self.per_s, 1), "frames": self.frames,
                "invoke_ms": round(self.invoke_ms / n, 2),
                "preprocess_ms": round(self.preprocess_ms / n, 2),
                "read_ms": round(self.read_ms / n, 2)}


@dataclass
class _Window:
    layout: Layout
    settle: int
    started: float | None = None
    frames: int = 0
    invoke_ms: float = 0.0
    preprocess_ms: float = 0.0
    read_ms: float = 0.0


@dataclass
class ThreadTuner:
    """Picks the :class:`Layout` with the most results/s by trying each in turn.

    Call :meth:`start` once, then :meth:`observe` after every frame served; either returns the
    layout to apply before the next frame (None: keep the current one).
    """

    candidates: Sequence[Layout]
    # A live source's frames come at the source's pace: among rates within TIE, the layout a
    # frame waits least for wins. A file is read as fast as it can be: the fastest wins.
    live: bool = True
    retune_s: float = RETUNE_S
    settle_frames: int = SETTLE_FRAMES
    window_frames: int = WINDOW_FRAMES
    window_s: float = WINDOW_S
    chosen: Layout | None = None
    reason: str = "measuring"
    rounds: int = 0
    decided_at: float | None = None
    frames_seen: int = 0
    decided_after_frames: int | None = None
    measured: dict[Layout, Measured] = field(default_factory=dict)
    _plan: list[Layout] = field(default_factory=list)
    _window: _Window | None = None
    _next_round: float | None = None

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError("no layout to choose from")

    @property
    def measuring(self) -> bool:
        return self._window is not None

    def start(self, now: float) -> Layout:
        """Begin a measuring round (at start-up, after a model swap); the layout to apply."""
        order = list(self.candidates)
        self._plan = order + order[::-1] if len(order) > 1 else order
        self.measured = {layout: Measured(layout) for layout in order}
        self.reason = "measuring"
        return self._open(self._plan.pop(0))

    def observe(self, now: float, *, invoke_ms: float, preprocess_ms: float,
                read_ms: float = 0.0) -> Layout | None:
        """One frame was served at ``now`` (monotonic seconds) with these costs."""
        self.frames_seen += 1
        window = self._window
        if window is None:
            if self._next_round is not None and now >= self._next_round:
                return self.start(now)
            return None
        if window.settle > 0:
            window.settle -= 1
            if window.settle == 0:
                window.started = now
            return None
        if window.started is None:
            window.started = now
            return None
        window.frames += 1
        window.invoke_ms += invoke_ms
        window.preprocess_ms += preprocess_ms
        window.read_ms += read_ms
        if window.frames < self.window_frames or now - window.started < self.window_s:
            return None
        self._close(window, now)
        if self._plan:
            return self._open(self._plan.pop(0))
        return self._decide(now)

    def _open(self, layout: Layout) -> Layout:
        self._window = _Window(layout, settle=self.settle_frames)
        if self.settle_frames == 0:
            self._window.started = None
        return layout

    def _close(self, window: _Window, now: float) -> None:
        m = self.measured[window.layout]
        m.frames += window.frames
        m.seconds += now - (window.started or now)
        m.invoke_ms += window.invoke_ms
        m.preprocess_ms += window.preprocess_ms
        m.read_ms += window.read_ms
        self._window = None

    def _decide(self, now: float) -> Layout:
        ranked = sorted(self.measured.values(), key=lambda m: m.per_s, reverse=True)
        best_rate = ranked[0].per_s
        close = [m for m in ranked if m.per_s >= best_rate * (1 - TIE)] if self.live else ranked[:1]
        best = min(close, key=lambda m: (m.latency_ms, m.layout.threads))
        self.chosen = best.layout
        self.rounds += 1
        self.decided_at = now
        self.decided_after_frames = self.frames_seen
        self._next_round = now + self.retune_s if self.retune_s > 0 else None
        others = ", ".join(f"{m.per_s:.1f} with {m.layout.threads}"
                           f"{' ahead' if m.layout.ahead else ' inline'}"
                           for m in ranked if m is not best)
        self.reason = (f"{best.per_s:.1f} results/s measured on this source, the most "
                       f"(others: {others or 'none'})")
        if best is not ranked[0]:
            self.reason += f"; within {TIE:.0%} of the fastest and quicker per frame"
        return best.layout

    def report(self) -> dict[str, Any]:
        """For status and metrics: what was chosen, why, and what each layout gave."""
        return {
            "mode": "auto",
            "threads": self.chosen.threads if self.chosen else None,
            "preprocess": (None if self.chosen is None
                           else "capture thread" if self.chosen.ahead else "inline"),
            "reason": self.reason,
            "rounds": self.rounds,
            "decided_after_frames": self.decided_after_frames,
            "measured": [m.summary() for m in self.measured.values() if m.frames],
        }


def tuner_for(threads: int | str | None, model: LoadedModel, *, live: bool = True,
              ) -> ThreadTuner | None:
    """A tuner when the threads are left to measurement and the CPU runs the model."""
    if isinstance(threads, int) or not model.retunable:
        return None
    candidates = layouts(cpu_count(), images=model.spec.is_image)
    # The thread count the model was built with first: one interpreter fewer to build.
    candidates.sort(key=lambda layout: layout.threads != model.backend.threads)
    return ThreadTuner(candidates, live=live) if len(candidates) > 1 else None
