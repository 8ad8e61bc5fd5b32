"""A candidate model run in the shadow of the serving one: every Nth frame also goes through it,
its answers are compared with what was served, and with ``promote: auto`` the comparison decides,
once enough frames were seen, whether the candidate takes over or is unloaded (and why)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA = "edge-shadow/1"


@dataclass(frozen=True)
class PromoteCriteria:
    """When ``promote: auto`` promotes: after ``frames`` compared frames, an agreement of at least
    ``agreement`` and a candidate latency p95 of at most ``max_latency_ms`` (when given)."""

    frames: int = 200
    agreement: float = 0.95
    max_latency_ms: float | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> PromoteCriteria:
        """From a command's ``criteria`` object; ValueError naming a bad field."""
        unknown = sorted(set(args) - {"frames", "agreement", "max_latency_ms"})
        if unknown:
            raise ValueError(f"unknown promote criteria: {', '.join(unknown[:5])}")
        frames = args.get("frames", cls.frames)
        agreement = args.get("agreement", cls.agreement)
        latency = args.get("max_latency_ms")
        if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= 100_000:
            raise ValueError("criteria 'frames' must be an integer in [1, 100000]")
        if isinstance(agreement, bool) or not isinstance(agreement, int | float) \
                or not 0 <= agreement <= 1:
            raise ValueError("criteria 'agreement' must be a number in [0, 1]")
        if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int | float)
                                    or latency <= 0):
            raise ValueError("criteria 'max_latency_ms' must be a positive number")
        return cls(frames, float(agreement), None if latency is None else float(latency))


@dataclass
class ShadowStats:
    """What the candidate did on the frames it saw, beside the serving model."""

    compared: int = 0
    agreed: int = 0
    serving_scores: list[float] = field(default_factory=list)
    candidate_scores: list[float] = field(default_factory=list)
    candidate_ms: list[float] = field(default_factory=list)
    serving_ms: list[float] = field(default_factory=list)
    errors: int = 0

    def add(self, serving: tuple[str | None, float | None, float],
            candidate: tuple[str | None, float | None, float]) -> None:
        """One frame: (top label, top score, inference ms) of each model."""
        self.compared += 1
        self.agreed += int(serving[0] == candidate[0])
        if serving[1] is not None:
            self.serving_scores.append(serving[1])
        if candidate[1] is not None:
            self.candidate_scores.append(candidate[1])
        self.serving_ms.append(serving[2])
        self.candidate_ms.append(candidate[2])

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def summary(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "compared": self.compared, "errors": self.errors,
            "agreement": None if self.agreement is None else round(self.agreement, 4),
            "score": {"serving_mean": _mean(self.serving_scores),
                      "candidate_mean": _mean(self.candidate_scores)},
            "latency_ms": {"serving_p50": _pct(self.serving_ms, 50),
                           "candidate_p50": _pct(self.candidate_ms, 50),
                           "candidate_p95": _pct(self.candidate_ms, 95)},
        }

    def decide(self, criteria: PromoteCriteria) -> tuple[bool, str] | None:
        """None while too few frames were compared; else (promote?, why)."""
        if self.compared < criteria.frames:
            return None
        agreement = self.agreement or 0.0
        if agreement < criteria.agreement:
            return False, (f"agreement {agreement:.1%} over {self.compared} frames is below "
                           f"{criteria.agreement:.1%}")
        p95 = _pct(self.candidate_ms, 95)
        if criteria.max_latency_ms is not None and p95 is not None and p95 > criteria.max_latency_ms:
            return False, f"latency p95 {p95:g} ms is over {criteria.max_latency_ms:g} ms"
        return True, f"agreement {agreement:.1%} over {self.compared} frames"


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 5) if values else None


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None
