from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.postprocess import Detection, Outcome, Prediction
from edge_runtime.postprocess.classify import classification_outcome
from edge_runtime.postprocess.detect import detection_outcome
from edge_runtime.postprocess.sensor import anomaly_outcome
from edge_runtime.publish.policy import PolicySettings, PublishPolicy


def cls(label: str, score: float, runner_up: float = 0.0) -> Outcome:
    preds = [Prediction(label, 0, score), Prediction("other", 1, runner_up)]
    return classification_outcome(sorted(preds, key=lambda p: -p.score))


def det(*objects: tuple[str, float]) -> Outcome:
    return detection_outcome([Detection(label, i, score, (0.1, 0.1, 0.5, 0.5))
                              for i, (label, score) in enumerate(objects)])


def policy(**kwargs: object) -> PublishPolicy:
    return PublishPolicy(PolicySettings(**kwargs))  # type: ignore[arg-type]


def decisions(p: PublishPolicy, outcomes: list[Outcome], step: float = 1.0) -> list[bool]:
    return [p.should_publish(o, i * step) for i, o in enumerate(outcomes)]


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"mode": "sometimes"}, "mode"),
        ({"mode": 3}, "mode"),
        ({"min_score": 1.5}, "min_score"),
        ({"min_score": "0.5"}, "min_score"),
        ({"min_score": float("nan")}, "min_score"),
        ({"trigger_count": 0}, "trigger_count"),
        ({"trigger_count": 2.5}, "trigger_count"),
        ({"trigger_count": True}, "trigger_count"),
        ({"refractory_s": -1}, "refractory_s"),
        ({"heartbeat_s": None}, "heartbeat_s"),
        ({"min_scroe": 0.5}, "min_scroe"),
    ],
)
def test_update_refuses_bad_values_naming_the_key(changes: dict[str, object], key: str) -> None:
    p = policy()
    with pytest.raises(ValueError, match=key):
        p.update(changes)
    assert p.settings == PolicySettings()


def test_update_is_atomic() -> None:
    p = policy(min_score=0.3)
    with pytest.raises(ValueError, match="trigger_count"):
        p.update({"min_score": 0.9, "trigger_count": -2})
    assert p.settings.min_score == 0.3


def test_update_applies_and_returns_the_new_settings() -> None:
    p = policy()
    new = p.update({"mode": "Threshold", "min_score": 1, "heartbeat_s": 30})
    assert new == p.settings
    assert (new.mode, new.min_score, new.heartbeat_s) == ("threshold", 1.0, 30.0)
    assert isinstance(new.min_score, float)
    assert new.as_dict()["trigger_count"] == 1


def test_update_refuses_a_non_mapping() -> None:
    with pytest.raises(ValueError, match="object"):
        policy().update([("min_score", 0.5)])  # type: ignore[arg-type]


def test_settings_are_validated_on_construction() -> None:
    with pytest.raises(ValueError, match="min_score"):
        PolicySettings(min_score=-0.1)


# --- filter ------------------------------------------------------------------------------------


def test_filter_drops_low_predictions_and_recomputes_the_top() -> None:
    p = policy(min_score=0.5)
    kept = p.filter(cls("cat", 0.7, 0.2))
    assert [x["label"] for x in kept.payload["predictions"]] == ["cat"]
    empty = p.filter(cls("cat", 0.4, 0.2))
    assert empty.payload["predictions"] == []
    assert (empty.top_label, empty.top_index, empty.top_score) == (None, None, None)


def test_filter_drops_low_detections() -> None:
    out = policy(min_score=0.5).filter(det(("car", 0.3), ("dog", 0.8), ("cat", 0.6)))
    assert [d["label"] for d in out.payload["detections"]] == ["dog", "cat"]
    assert (out.top_label, out.top_score) == ("dog", 0.8)


def test_filter_leaves_other_tasks_and_zero_min_score_alone() -> None:
    anomaly = anomaly_outcome(0.1, 0.5)
    assert policy(min_score=0.9).filter(anomaly) is anomaly
    outcome = cls("cat", 0.1)
    assert policy().filter(outcome) is outcome


# --- modes -------------------------------------------------------------------------------------


def test_every_publishes_everything() -> None:
    assert decisions(policy(), [cls("a", 0.1), cls("a", 0.1), det()]) == [True] * 3


def test_threshold_needs_consecutive_hits() -> None:
    p = policy(mode="threshold", min_score=0.6, trigger_count=3)
    scores = [0.7, 0.8, 0.2, 0.7, 0.7, 0.9, 0.95, 0.1]
    assert decisions(p, [cls("a", s) for s in scores]) == [
        False, False, False, False, False, True, True, False]


def test_threshold_for_detection_means_any_detection() -> None:
    p = policy(mode="threshold", min_score=0.5)
    outcomes = [det(("a", 0.2), ("b", 0.4)), det(("a", 0.2), ("b", 0.6)), det()]
    assert decisions(p, outcomes) == [False, True, False]


def test_threshold_for_anomaly_uses_is_anomaly() -> None:
    p = policy(mode="threshold", min_score=0.0)
    outcomes = [anomaly_outcome(0.9, 1.0), anomaly_outcome(1.2, 1.0), anomaly_outcome(0.0, -1.0)]
    assert decisions(p, outcomes) == [False, True, True]


def test_change_publishes_first_result_then_only_changes() -> None:
    p = policy(mode="change")
    labels = ["cat", "cat", "dog", "dog", "cat"]
    assert decisions(p, [cls(x, 0.9) for x in labels]) == [True, False, True, False, True]


def test_change_must_be_confirmed() -> None:
    p = policy(mode="change", trigger_count=2)
    labels = ["cat", "cat", "dog", "cat", "dog", "dog", "dog", "cat"]
    assert decisions(p, [cls(x, 0.9) for x in labels]) == [
        False, True, False, False, False, True, False, False]


def test_change_for_detection_compares_label_sets() -> None:
    p = policy(mode="change", min_score=0.5)
    outcomes = [
        det(("car", 0.9), ("dog", 0.7)),
        det(("dog", 0.8), ("car", 0.6)),  # same set, other order
        det(("dog", 0.8), ("car", 0.6), ("cat", 0.3)),  # cat below min_score
        det(("dog", 0.8)),
        det(),
    ]
    assert decisions(p, outcomes) == [True, False, False, True, True]


def test_change_for_classification_ignores_low_confidence_labels() -> None:
    p = policy(mode="change", min_score=0.6)
    outcomes = [cls("cat", 0.9), cls("dog", 0.4), cls("dog", 0.5), cls("dog", 0.8)]
    assert decisions(p, outcomes) == [True, True, False, True]


def test_change_for_anomaly_follows_the_verdict() -> None:
    p = policy(mode="change")
    outcomes = [anomaly_outcome(s, 0.5) for s in (0.1, 0.2, 0.9, 0.8, 0.1)]
    assert decisions(p, outcomes) == [True, False, True, False, True]


# --- refractory and heartbeat ------------------------------------------------------------------


def test_refractory_suppresses_triggers_for_a_while() -> None:
    p = policy(mode="threshold", min_score=0.5, refractory_s=2.5)
    assert decisions(p, [cls("a", 0.9)] * 6) == [True, False, False, True, False, False]


def test_change_held_through_refractory_is_published_when_it_ends() -> None:
    p = policy(mode="change", refractory_s=3.0)
    labels = ["cat", "dog", "dog", "dog", "dog"]
    assert decisions(p, [cls(x, 0.9) for x in labels]) == [True, False, False, True, False]


def test_change_that_reverts_during_refractory_is_not_published() -> None:
    p = policy(mode="change", refractory_s=3.0)
    labels = ["cat", "dog", "cat", "cat", "cat"]
    assert decisions(p, [cls(x, 0.9) for x in labels]) == [True, False, False, False, False]


def test_heartbeat_publishes_when_quiet() -> None:
    p = policy(mode="threshold", min_score=0.9, heartbeat_s=3.0)
    assert decisions(p, [cls("a", 0.1)] * 8) == [
        False, False, False, True, False, False, True, False]


def test_heartbeat_does_not_start_refractory_and_triggers_reset_it() -> None:
    p = policy(mode="threshold", min_score=0.5, refractory_s=10.0, heartbeat_s=2.0)
    scores = [0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.1]
    # t=2 heartbeat; t=3 trigger (heartbeat did not start a refractory); t=5 heartbeat
    assert decisions(p, [cls("a", s) for s in scores]) == [
        False, False, True, True, False, True, False]


def test_reset_forgets_the_last_published_label() -> None:
    p = policy(mode="change")
    assert p.should_publish(cls("cat", 0.9), 0.0)
    assert not p.should_publish(cls("cat", 0.9), 1.0)
    p.reset()
    assert p.should_publish(cls("cat", 0.9), 2.0)


def test_update_restarts_confirmation() -> None:
    p = policy(mode="threshold", min_score=0.5, trigger_count=2)
    assert not p.should_publish(cls("a", 0.9), 0.0)
    p.update({"min_score": 0.6})
    assert not p.should_publish(cls("a", 0.9), 1.0)
    assert p.should_publish(cls("a", 0.9), 2.0)


@settings(max_examples=60, deadline=None)
@given(
    mode=st.sampled_from(["every", "change", "threshold"]),
    refractory=st.floats(0.0, 5.0),
    steps=st.lists(st.tuples(st.floats(0.01, 2.0), st.sampled_from(["a", "b"]),
                             st.floats(0.0, 1.0)), max_size=40),
)
def test_triggered_publishes_respect_the_refractory_period(
        mode: str, refractory: float, steps: list[tuple[float, str, float]]) -> None:
    p = policy(mode=mode, min_score=0.5, refractory_s=refractory)
    now, published = 0.0, []
    for gap, label, score in steps:
        now += gap
        if p.should_publish(cls(label, score), now):
            published.append(now)
    assert all(b - a >= refractory for a, b in itertools.pairwise(published))
    if mode == "every" and refractory == 0.0:
        assert len(published) == len(steps)
