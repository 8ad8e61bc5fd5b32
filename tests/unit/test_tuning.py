"""Threads by measurement: the tuner tries every layout and keeps the one that served most."""

from __future__ import annotations

import pytest

from edge_runtime.tuning import Layout, ThreadTuner, layouts


def drive(tuner: ThreadTuner, cost_s: dict[Layout, float], now: float = 0.0,
          frames: int = 1000) -> tuple[list[Layout], float]:
    """Serve ``frames`` frames, each taking the current layout's cost; the layouts applied."""
    current = tuner.start(now)
    applied = [current]
    for _ in range(frames):
        now += cost_s[current]
        change = tuner.observe(now, invoke_ms=cost_s[current] * 1e3, preprocess_ms=0.5)
        if change is not None:
            current = change
            applied.append(change)
    return applied, now


def test_layouts_cover_threads_and_placement() -> None:
    assert layouts(2, images=True) == [Layout(1, False), Layout(1, True), Layout(2, False),
                                       Layout(2, True)]
    assert layouts(3, images=False) == [Layout(1, False), Layout(2, False), Layout(3, False)]
    assert layouts(0, images=False) == [Layout(1, False)]


def test_the_fastest_layout_wins_and_every_one_is_tried_both_ways() -> None:
    candidates = layouts(2, images=True)
    cost = {Layout(1, False): 0.010, Layout(1, True): 0.006, Layout(2, False): 0.008,
            Layout(2, True): 0.007}
    tuner = ThreadTuner(candidates, window_frames=4, window_s=0.02, settle_frames=1)
    applied, _ = drive(tuner, cost)
    assert tuner.chosen == Layout(1, True)
    assert applied[-1] == Layout(1, True)
    # A B C D, then D C B A (a steady drift weighs on every layout alike), then the choice.
    assert applied[:8] == candidates + candidates[::-1]
    report = tuner.report()
    assert report["threads"] == 1 and report["preprocess"] == "capture thread"
    assert report["rounds"] == 1 and len(report["measured"]) == 4
    assert "results/s" in report["reason"]


def test_a_tie_goes_to_the_layout_a_frame_waits_least_for() -> None:
    # A camera paces both layouts at the same rate; the one with the shorter invoke wins.
    candidates = [Layout(1, False), Layout(2, False)]
    tuner = ThreadTuner(candidates, window_frames=3, window_s=0.0, settle_frames=0)
    tuner_now = 0.0
    current = tuner.start(tuner_now)
    for _ in range(200):
        tuner_now += 0.04
        invoke = 9.0 if current.threads == 1 else 5.0
        change = tuner.observe(tuner_now, invoke_ms=invoke, preprocess_ms=1.0)
        current = change or current
    assert tuner.chosen == Layout(2, False)


def test_a_file_takes_the_fastest_layout_even_a_hair_ahead() -> None:
    # Read as fast as it can be, a file has no frame waiting on a pace: 2% more results/s wins
    # over a shorter wait per frame (a camera would take the shorter wait, as above).
    candidates = [Layout(1, False), Layout(1, True)]
    cost = {Layout(1, False): 0.0098, Layout(1, True): 0.0100}
    for live, expected in ((False, Layout(1, False)), (True, Layout(1, True))):
        tuner = ThreadTuner(candidates, live=live, window_frames=4, window_s=0.02,
                            settle_frames=1)
        drive(tuner, cost)
        assert tuner.chosen == expected


def test_it_measures_again_after_the_retune_interval() -> None:
    candidates = [Layout(1, False), Layout(2, False)]
    cost = {Layout(1, False): 0.01, Layout(2, False): 0.005}
    tuner = ThreadTuner(candidates, retune_s=5.0, window_frames=2, window_s=0.0, settle_frames=0)
    drive(tuner, cost, frames=2000)  # 2000 frames of 5-10 ms: well past 5 s
    assert tuner.rounds >= 2
    assert tuner.chosen == Layout(2, False)


def test_nothing_changes_between_rounds() -> None:
    tuner = ThreadTuner([Layout(1, False), Layout(2, False)], retune_s=0.0, window_frames=1,
                        window_s=0.0, settle_frames=0)
    drive(tuner, {Layout(1, False): 0.01, Layout(2, False): 0.02}, frames=100)
    assert not tuner.measuring
    assert tuner.observe(1e6, invoke_ms=1.0, preprocess_ms=1.0) is None
    assert tuner.rounds == 1


def test_an_empty_choice_is_refused() -> None:
    with pytest.raises(ValueError):
        ThreadTuner([])
