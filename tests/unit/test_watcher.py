"""A pipeline's watch without a model or a broker: shadow requests, the shadow run's decision,
the roll-back after an alarm in the watch window, hard examples and the canary's judgement."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from converters.canary import Reports, _Seen
from edge_runtime.control.dispatcher import CommandRefused
from edge_runtime.control.shadowing import shadow_request
from edge_runtime.frames import Frame
from edge_runtime.model import Timings
from edge_runtime.monitor.health import MonitorSettings, chance_psi
from edge_runtime.monitor.samples import SampleKeeper, list_samples
from edge_runtime.monitor.shadow import PromoteCriteria
from edge_runtime.monitor.watcher import ShadowRun, Watcher
from edge_runtime.postprocess import Outcome

LABELS = ["a", "b", "c"]
SHARES = {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}


class FakeModel:
    """What the watcher reads of a model; ``run`` answers ``label`` for every frame."""

    def __init__(self, version: str, label: str = "a",
                 shares: dict[str, float] | None = None) -> None:
        manifest = SimpleNamespace(reference_stats={"predicted_class_share": shares or SHARES})
        self.bundle = SimpleNamespace(
            manifest=manifest, labels=LABELS, profile={}, version=version,
            model_info={"name": "m", "version": version, "sha256": version * 8})
        self.label = label
        self.closed = False

    def run(self, data: np.ndarray) -> tuple[Outcome, Timings]:
        return outcome(self.label), Timings(0.1, 1.0, 0.1)


def outcome(label: str) -> Outcome:
    p = np.full(3, 0.05, np.float32)
    p[LABELS.index(label)] = 0.9
    return Outcome("classification", {"predictions": []}, label, LABELS.index(label), 0.9, p)


def frame(i: int) -> Frame:
    data = np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return Frame(i, str(i), time.time(), data)


def watcher(window: int = 30, **kw: Any) -> tuple[Watcher, list[tuple[str, dict[str, Any]]]]:
    sent: list[tuple[str, dict[str, Any]]] = []
    w = Watcher(MonitorSettings(window=window, min_results=10), lambda k, r: sent.append((k, r)),
                **kw)
    return w, sent


def feed(w: Watcher, model: FakeModel, labels: list[str]) -> None:
    for i, label in enumerate(labels):
        w.observe(frame(i), model, outcome(label), Timings(0.1, 1.0, 0.1))  # type: ignore[arg-type]


def test_shadow_requests_are_checked() -> None:
    assert shadow_request({}) is None
    request = shadow_request({"mode": "shadow", "promote": "auto", "every": 3,
                              "criteria": {"frames": 50, "agreement": 0.9}})
    assert request is not None and request.auto and request.every == 3
    assert request.criteria == PromoteCriteria(50, 0.9)
    for bad in ({"mode": "later"}, {"promote": "auto"}, {"mode": "shadow", "promote": "now"},
                {"mode": "shadow", "every": 0}, {"mode": "shadow", "criteria": {"frames": 0}}):
        with pytest.raises(CommandRefused):
            shadow_request(bad)


def test_a_shadow_run_decides_after_its_frames_and_stops_running_the_candidate() -> None:
    w, sent = watcher(window=1000)
    serving, candidate = FakeModel("1", "a"), FakeModel("2", "b")
    w.serve(serving, swapped=False)  # type: ignore[arg-type]
    run = ShadowRun(candidate, PromoteCriteria(frames=10, agreement=0.9), auto=True,  # type: ignore[arg-type]
                    every=2)
    w.begin_shadow(run)
    feed(w, serving, ["a"] * 19)
    assert run.decision is None and run.stats.compared == 9
    feed(w, serving, ["a"] * 5)
    assert run.decision is not None and run.decision[0] is False
    assert run.stats.compared == 10 and "agreement 0.0%" in run.decision[1]
    shadow = [r for k, r in sent if k == "shadow"]
    assert shadow[-1]["state"] == "deciding" and shadow[-1]["candidate"]["version"] == "2"
    assert w.take_shadow() is run and w.shadow is None


def test_an_alarm_in_the_watch_window_after_a_swap_asks_for_a_roll_back() -> None:
    w, sent = watcher(window=30, watch_windows=2)
    old, new = FakeModel("1"), FakeModel("2", shares={"a": 0.0, "b": 0.0, "c": 1.0})
    w.serve(old, swapped=False)  # type: ignore[arg-type]
    feed(w, old, ["a", "b", "c"] * 10)
    assert w.rollback_reason is None and sent[-1][1]["verdict"] != "alarm"
    w.serve(new, swapped=True)  # type: ignore[arg-type]
    feed(w, new, ["a", "b", "c"] * 10)
    report = sent[-1][1]
    assert report["verdict"] == "alarm" and report["after_swap"] is True
    assert report["model"]["version"] == "2"
    reason = w.take_rollback()
    assert reason is not None and "class mix shifted" in reason
    w.rolled_back(new.bundle.model_info, old.bundle.model_info, reason)
    assert sent[-1][1]["rollback"]["to"]["version"] == "1" and w.watch_left == 0


def test_the_same_alarm_without_a_swap_never_rolls_back() -> None:
    w, _ = watcher(window=30)
    model = FakeModel("1", shares={"a": 0.0, "b": 0.0, "c": 1.0})
    w.serve(model, swapped=False)  # type: ignore[arg-type]
    feed(w, model, ["a", "b", "c"] * 10)
    assert w.verdict == "alarm" and w.take_rollback() is None


def test_hard_examples_are_bounded_by_count_and_only_unsure_frames_are_kept(
        tmp_path: Path) -> None:
    keeper = SampleKeeper(tmp_path / "samples" / "p", max_margin=0.5, max_count=3,
                          max_bytes=10**6)
    sure = outcome("a")
    unsure = Outcome("classification", {"predictions": [{"label": "a"}]}, "a", 0, 0.4,
                     np.array([0.4, 0.35, 0.25], np.float32))
    for i in range(6):
        keeper.offer(frame(i), sure, {"version": "1"})
        keeper.offer(frame(i), unsure, {"version": "1"})
    keeper.close()
    kept = list_samples(tmp_path / "samples")
    assert len(kept) == 3 and keeper.counts()["kept"] == 3
    assert [s["frame"]["index"] for s in kept] == [3, 4, 5]
    assert all(abs(s["margin"] - 0.05) < 1e-6 for s in kept)


def test_chance_levels_of_psi_shrink_as_windows_grow() -> None:
    shares = tuple([0.1] * 10)
    small, large = chance_psi(shares, 20, 0.999), chance_psi(shares, 500, 0.999)
    assert small > 1.0 > 0.1 > large
    assert chance_psi(shares, 100, 0.99) < chance_psi(shares, 100, 0.999)


def test_a_canary_is_healthy_only_once_promoted_and_judged_on_the_new_model() -> None:
    model = {"version": "2", "sha256": "s2"}
    seen = _Seen()
    assert Reports._judge(seen, model) is None
    seen.shadow.append({"state": "promoted", "candidate": model, "agreement": 1.0})
    seen.health.append({"verdict": "ok", "model": {"version": "1", "sha256": "s1"},
                        "reasons": []})
    seen.health.append({"verdict": "ok", "model": model, "reasons": ["only 3 result(s) in "
                                                                     "this window: not judged"]})
    assert Reports._judge(seen, model) is None
    seen.health.append({"verdict": "warn", "model": model, "reasons": ["x"],
                        "window": {"index": 4}})
    assert Reports._judge(seen, model) == (True, "promoted (agreement 100.0%), health warn in "
                                                 "window 4")
    refused = _Seen(shadow=[{"state": "refused", "candidate": model, "reason": "auto: low"}])
    assert Reports._judge(refused, model) == (False, "shadow: refused: auto: low")
