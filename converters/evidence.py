"""How sure the figures are: 95% intervals for accuracies and agreement, and a gate that decides
only on evidence.

Every proportion carries its sample count and a Wilson score interval (sound at the small counts a
user's own validation set often has, where the textbook normal interval is not). The accuracy drop
between the float and the int8 model is a difference of paired proportions (the same samples run
through both), with Newcombe's interval for it; without labels the disagreement between the two
models stands in for the drop (the int8 model can lose at most the samples it answers differently).
The gate passes when the whole interval is at or under the allowed drop, fails when the whole
interval is over it, and is otherwise undecided, saying about how many samples would decide it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Z95 = 1.959964
Verdict = Literal["pass", "fail", "undecided"]
EXIT_CODES: dict[str, int] = {"pass": 0, "fail": 3, "undecided": 4}
MAX_SUGGESTED = 1_000_000


@dataclass(frozen=True)
class Proportion:
    """``hits`` out of ``n``, with its 95% Wilson interval."""

    hits: int
    n: int

    @property
    def value(self) -> float:
        return self.hits / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.hits, self.n)

    def to_json(self) -> dict[str, Any]:
        low, high = self.interval
        return {"value": round(self.value, 5), "n": self.n,
                "ci95": [round(low, 5), round(high, 5)]}

    def text(self) -> str:
        low, high = self.interval
        return f"{self.value:.1%} (95% CI {low:.1%}–{high:.1%}, n={self.n})"


def wilson(hits: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``hits``/``n``; (0, 1) when there is no sample."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(a: float, b: float, c: float, d: float, z: float = Z95) -> tuple[float, float]:
    """Newcombe's interval for (a + b)/n - (a + c)/n from paired counts (fractional counts
    allowed, for sizing a set that would decide)."""
    n = a + b + c + d
    if n <= 0:
        return -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, z)
    l2, u2 = wilson(a + c, n, z)
    product = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(product) if product else 0.0
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)
                          + (u2 - p2) ** 2))
    epsilon = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2)
                            + (p2 - l2) ** 2))
    drop = (b - c) / n
    return max(-1.0, drop - delta), min(1.0, drop + epsilon)


@dataclass(frozen=True)
class PairedCounts:
    """The same samples through both models: ``both`` right, ``float_only`` right, ``int8_only``
    right, ``neither``."""

    both: int
    float_only: int
    int8_only: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.float_only + self.int8_only + self.neither

    @property
    def drop(self) -> float:
        """Float accuracy minus int8 accuracy, as a fraction."""
        return (self.float_only - self.int8_only) / self.n if self.n else 0.0

    def drop_interval(self, z: float = Z95) -> tuple[float, float]:
        """Newcombe's hybrid score interval for the paired difference (his method 10)."""
        return newcombe(self.both, self.float_only, self.int8_only, self.neither, z)

    def interval_at(self, size: float) -> tuple[float, float]:
        """The interval the same proportions would give on ``size`` samples."""
        k = size / max(1, self.n)
        return newcombe(self.both * k, self.float_only * k, self.int8_only * k,
                        self.neither * k)

    def drop_variance(self) -> float:
        """Per-sample variance of the paired difference (for sizing a set that would decide)."""
        n = self.n
        if n == 0:
            return 0.25
        discordant = (self.float_only + self.int8_only) / n
        return max(discordant - self.drop ** 2, 1.0 / n)


@dataclass(frozen=True)
class GateDecision:
    verdict: Verdict
    measured: float               # the drop (or disagreement), as a fraction
    interval: tuple[float, float]
    threshold: float              # the allowed drop, as a fraction
    n: int
    basis: str                    # "accuracy" (labels) or "disagreement" (no labels)
    samples_to_decide: int | None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.verdict, "passed": self.verdict == "pass", "basis": self.basis,
            "measured_points": round(self.measured * 100, 3),
            "ci95_points": [round(self.interval[0] * 100, 3), round(self.interval[1] * 100, 3)],
            "max_drop_points": round(self.threshold * 100, 3), "samples": self.n,
            "samples_to_decide": self.samples_to_decide,
        }

    def text(self) -> str:
        low, high = (v * 100 for v in self.interval)
        what = {"accuracy": "accuracy drop", "mAP": "mAP@0.5 drop"}.get(self.basis,
                                                                          self.basis)
        head = (f"{what} {self.measured * 100:.2f} points (95% CI {low:.2f} to {high:.2f}, "
                f"n={self.n}), allowed {self.threshold * 100:g}")
        if self.verdict == "pass":
            return f"gate passed: {head}"
        if self.verdict == "fail":
            return f"gate failed: {head}; the whole interval is over the allowed drop"
        kind = "labelled samples" if self.basis in ("accuracy", "mAP") else "samples"
        more = (f"about {self.samples_to_decide} {kind} would decide it"
                if self.samples_to_decide else "no number of samples would decide it")
        return f"gate undecided: {head}; {more}"


@dataclass(frozen=True)
class DropEvidence:
    """A drop measured some other way (e.g. mAP by bootstrap): its value and 95% interval as
    fractions, the sample count, and the per-sample variance used to size a deciding set."""

    basis: str
    measured: float
    interval: tuple[float, float]
    n: int
    variance: float


def gate_on_evidence(evidence: DropEvidence, max_drop_points: float) -> GateDecision:
    return decide(evidence.interval, evidence.measured, max_drop_points / 100, evidence.n,
                  evidence.basis, evidence.variance)


IntervalAt = Callable[[float], tuple[float, float]]


def _verdict(interval: tuple[float, float], threshold: float) -> Verdict:
    low, high = interval
    if high <= threshold:
        return "pass"
    return "fail" if low > threshold else "undecided"


def decide(interval: tuple[float, float], measured: float, threshold: float, n: int,
           basis: str, variance: float, interval_at: IntervalAt | None = None) -> GateDecision:
    """The verdict; when undecided, about how many samples with the same proportions would
    decide it (found on the interval itself when ``interval_at`` gives it, else from the
    variance by the normal approximation)."""
    verdict = _verdict(interval, threshold)
    needed = None
    if verdict == "undecided" and measured != threshold:
        if interval_at is not None:
            needed = _search(interval_at, n, threshold)
        else:
            gap = abs(measured - threshold)
            needed = min(MAX_SUGGESTED, math.ceil(Z95 * Z95 * variance / (gap * gap)))
            needed = max(needed, n + 1)
    return GateDecision(verdict, measured, interval, threshold, n, basis, needed)


def _search(interval_at: IntervalAt, n: int, threshold: float) -> int | None:
    """The smallest size (doubling, then bisecting) at which the interval leaves the threshold."""
    low, high = max(1, n), max(2, n * 2)
    while _verdict(interval_at(high), threshold) == "undecided":
        low, high = high, high * 2
        if high > MAX_SUGGESTED:
            return None
    while high - low > max(1, low // 100):
        middle = (low + high) // 2
        if _verdict(interval_at(middle), threshold) == "undecided":
            low = middle
        else:
            high = middle
    return high


def gate_on_accuracy(counts: PairedCounts, max_drop_points: float) -> GateDecision:
    """The gate with labels: the paired accuracy drop against the allowed drop."""
    return decide(counts.drop_interval(), counts.drop, max_drop_points / 100, counts.n,
                  "accuracy", counts.drop_variance(), counts.interval_at)


def gate_on_disagreement(agreement: Proportion, max_drop_points: float) -> GateDecision:
    """The gate without labels: top-1 disagreement bounds what accuracy can have been lost."""
    disagree = Proportion(agreement.n - agreement.hits, agreement.n)
    p = disagree.value
    return decide(disagree.interval, p, max_drop_points / 100, disagree.n, "disagreement",
                  max(p * (1 - p), 1.0 / max(1, disagree.n)),
                  lambda size: wilson(p * size, size))


def paired_counts(float_right: list[bool], int8_right: list[bool]) -> PairedCounts:
    both = sum(1 for f, q in zip(float_right, int8_right, strict=True) if f and q)
    f_only = sum(1 for f, q in zip(float_right, int8_right, strict=True) if f and not q)
    q_only = sum(1 for f, q in zip(float_right, int8_right, strict=True) if q and not f)
    return PairedCounts(both, f_only, q_only, len(float_right) - both - f_only - q_only)
