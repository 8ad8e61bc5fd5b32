"""Intervals and the evidence gate (pure arithmetic: no TensorFlow needed, but it is the
converter's)."""

from __future__ import annotations

import pytest

from converters.evidence import (
    PairedCounts,
    Proportion,
    gate_on_accuracy,
    gate_on_disagreement,
    paired_counts,
    wilson,
)


def test_wilson_matches_the_textbook_values() -> None:
    low, high = wilson(9, 10)
    assert low == pytest.approx(0.5958, abs=1e-3) and high == pytest.approx(0.9821, abs=1e-3)
    assert wilson(0, 40)[1] == pytest.approx(0.0876, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def test_one_loss_in_ten_is_not_evidence_of_a_ten_point_drop() -> None:
    decision = gate_on_accuracy(PairedCounts(both=8, float_only=1, int8_only=0, neither=1), 1.0)
    assert decision.verdict == "undecided"
    assert decision.samples_to_decide is not None and decision.samples_to_decide > 10
    assert "undecided" in decision.text() and decision.exit_code == 4


def test_without_labels_the_disagreement_is_gated_on_its_interval() -> None:
    assert gate_on_disagreement(Proportion(40, 40), 1.0).verdict == "undecided"  # too few
    assert gate_on_disagreement(Proportion(400, 500), 1.0).verdict == "fail"
    assert gate_on_disagreement(Proportion(998, 1000), 1.0).verdict == "pass"


def test_a_broken_model_fails_with_evidence_and_a_good_one_passes() -> None:
    broken = gate_on_accuracy(PairedCounts(both=40, float_only=400, int8_only=5, neither=55), 1.0)
    assert broken.verdict == "fail" and broken.exit_code == 3
    good = gate_on_accuracy(PairedCounts(both=5300, float_only=2, int8_only=3, neither=200), 1.0)
    assert good.verdict == "pass" and good.exit_code == 0
    assert good.interval[0] <= good.measured <= good.interval[1]


def test_newcombe_interval_contains_the_difference_and_narrows_with_samples() -> None:
    small = PairedCounts(both=80, float_only=6, int8_only=2, neither=12)
    large = PairedCounts(both=800, float_only=60, int8_only=20, neither=120)
    assert small.drop == pytest.approx(large.drop)
    for counts in (small, large):
        low, high = counts.drop_interval()
        assert low < counts.drop < high
    assert (large.drop_interval()[1] - large.drop_interval()[0]) < \
        (small.drop_interval()[1] - small.drop_interval()[0]) / 2


def test_paired_counts_from_per_sample_outcomes() -> None:
    counts = paired_counts([True, True, False, False, True], [True, False, True, False, True])
    assert counts == PairedCounts(both=2, float_only=1, int8_only=1, neither=1)


def test_figures_serialise_with_their_counts_and_intervals() -> None:
    figure = Proportion(97, 100).to_json()
    assert figure["n"] == 100 and figure["ci95"][0] < 0.97 < figure["ci95"][1]
    gate = gate_on_disagreement(Proportion(538, 539), 1.0).to_json()
    assert gate["status"] in ("pass", "undecided") and gate["samples"] == 539
