"""The gate on a converted model, decided on evidence (``converters.evidence``).

With labels, the paired accuracy drop (Newcombe's interval); without, the top-1 disagreement
(Wilson); for a detector, the mAP@0.5 drop or the box disagreement (bootstrap over images). The
gate fails only when the whole interval is over the allowed drop, passes only when it is all at
or under it, and is otherwise undecided, saying how many samples would decide it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .evidence import (
    EXIT_CODES,
    GateDecision,
    Proportion,
    gate_on_accuracy,
    gate_on_disagreement,
    gate_on_evidence,
)
from .verify import Comparison

SEVERITY = ("pass", "undecided", "fail")


def judge(cmp: Comparison, max_drop_points: float) -> GateDecision:
    if cmp.evidence is not None:
        return gate_on_evidence(cmp.evidence, max_drop_points)
    if cmp.paired is not None:
        return gate_on_accuracy(cmp.paired, max_drop_points)
    return gate_on_disagreement(cmp.agreement_proportion, max_drop_points)


def gate_section(decision: GateDecision, cmp: Comparison, max_drop_points: float,
                 ) -> dict[str, Any]:
    """The manifest's ``gate``: the decision, plus the fields earlier bundles carried."""
    return {**decision.to_json(), "accuracy_drop": round(cmp.drop_points, 3),
            "max_accuracy_drop": max_drop_points, "text": decision.text()}


def calibration_agreement(cmp: Comparison) -> dict[str, Any]:
    """Agreement on the calibration samples themselves: quantization error needs no labels,
    but these samples set the ranges, so this figure is beside the gate, not in it."""
    proportion = Proportion(cmp.agreeing, cmp.samples)
    return {**proportion.to_json(), "text": proportion.text()}


def no_recovery_reason(decision: GateDecision) -> str:
    """Why the gate's verdict started no recovery."""
    if decision.verdict == "pass":
        return "no recovery: the gate passed"
    low, high = (v * 100 for v in decision.interval)
    return (f"no recovery: the measured {decision.measured * 100:.2f}-point "
            f"{'drop' if decision.basis in ('accuracy', 'mAP') else decision.basis} is within "
            f"noise (95% CI {low:.2f} to {high:.2f} points on {decision.n} samples reaches "
            f"the allowed {decision.threshold * 100:g}); recovery runs only when the evidence "
            "shows a drop over it")


def worst(statuses: Iterable[str]) -> str:
    """The verdict of several profiles together: any fail, else any undecided, else pass."""
    found = list(statuses)
    return max(found, key=SEVERITY.index) if found else "pass"


def exit_code(status: str) -> int:
    return EXIT_CODES[status]
