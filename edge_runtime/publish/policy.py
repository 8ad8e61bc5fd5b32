"""When a pipeline publishes a result: every one, on a confirmed change, or over a threshold.

Modes:

- ``every``: each result is a trigger.
- ``threshold``: a trigger while the top score is ≥ ``min_score`` (detection: any detection;
  anomaly: ``is_anomaly``) and has been so for ``trigger_count`` consecutive results.
- ``change``: a trigger when the top label (detection: the set of labels scoring ≥ ``min_score``)
  differs from the last published one for ``trigger_count`` consecutive results.

After a triggered publish, further triggers are suppressed for ``refractory_s`` seconds (a change
held through that time is published when it ends). With ``heartbeat_s`` > 0 a result is published
anyway when nothing was for that long; heartbeats neither start a refractory period nor count as
the last published label.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from edge_runtime.postprocess import Outcome

MODES: tuple[str, ...] = ("every", "change", "threshold")   # the one list of publish modes
_ITEM_KEYS = {"classification": "predictions", "detection": "detections"}
_NOTHING = object()


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """Publish settings of one pipeline; invalid values raise ValueError naming the key."""

    mode: str = "every"
    min_score: float = 0.0
    trigger_count: int = 1
    refractory_s: float = 0.0
    heartbeat_s: float = 0.0

    def __post_init__(self) -> None:
        mode = self.mode.lower() if isinstance(self.mode, str) else self.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "min_score", _number("min_score", self.min_score, 0.0, 1.0))
        object.__setattr__(self, "refractory_s", _number("refractory_s", self.refractory_s, 0.0))
        object.__setattr__(self, "heartbeat_s", _number("heartbeat_s", self.heartbeat_s, 0.0))
        if isinstance(self.trigger_count, bool) or not isinstance(self.trigger_count, int):
            raise ValueError(f"trigger_count must be an integer, got {self.trigger_count!r}")
        if self.trigger_count < 1:
            raise ValueError(f"trigger_count must be ≥ 1, got {self.trigger_count}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(PolicySettings))


def _number(key: str, value: Any, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if not low <= value <= high:
        bounds = f"≥ {low:g}" if high == math.inf else f"within [{low:g}, {high:g}]"
        raise ValueError(f"{key} must be {bounds}, got {value}")
    return float(value)


class PublishPolicy:
    """Decides, result by result, what a pipeline publishes. Call ``should_publish`` once each."""

    def __init__(self, settings: PolicySettings) -> None:
        self._settings = settings
        self.reset()

    @property
    def settings(self) -> PolicySettings:
        return self._settings

    def reset(self) -> None:
        """Forget everything seen so far (e.g. after a model reload)."""
        self._started_at: float | None = None
        self._last_publish_at: float | None = None
        self._last_trigger_at: float | None = None
        self._published_key: object = _NOTHING
        self._forget_streak()

    def _forget_streak(self) -> None:
        self._streak = 0
        self._candidate_key: object = _NOTHING

    def update(self, changes: Mapping[str, Any]) -> PolicySettings:
        """Apply a ``set`` command atomically: every key valid, or nothing changes."""
        if not isinstance(changes, Mapping):
            raise ValueError(f"settings must be an object, got {type(changes).__name__}")
        unknown = sorted(str(key) for key in changes if key not in SETTING_NAMES)
        if unknown:
            raise ValueError(f"unknown setting '{unknown[0]}'; known: {', '.join(SETTING_NAMES)}")
        self._settings = replace(self._settings, **dict(changes))
        self._forget_streak()
        return self._settings

    def filter(self, outcome: Outcome) -> Outcome:
        """Drop predictions / detections scoring below ``min_score``."""
        key = _ITEM_KEYS.get(outcome.task)
        min_score = self._settings.min_score
        if key is None or min_score <= 0 or key not in outcome.payload:
            return outcome
        kept = [item for item in outcome.payload[key] if item["score"] >= min_score]
        return _with_items(outcome, key, kept)

    def should_publish(self, outcome: Outcome, now: float) -> bool:
        if self._started_at is None:
            self._started_at = now
        if self._triggered(outcome) and not self._in_refractory(now):
            self._commit_trigger(now)
            return True
        if self._heartbeat_due(now):
            self._last_publish_at = now
            return True
        return False

    def _triggered(self, outcome: Outcome) -> bool:
        mode = self._settings.mode
        if mode == "every":
            return True
        if mode == "threshold":
            self._streak = self._streak + 1 if self._hit(outcome) else 0
            return self._streak >= self._settings.trigger_count
        return self._changed(self._key(outcome))

    def _changed(self, key: object) -> bool:
        if key == self._published_key:
            self._forget_streak()
            return False
        if key == self._candidate_key:
            self._streak += 1
        else:
            self._candidate_key, self._streak = key, 1
        return self._streak >= self._settings.trigger_count

    def _commit_trigger(self, now: float) -> None:
        self._last_trigger_at = self._last_publish_at = now
        if self._settings.mode == "change":
            self._published_key = self._candidate_key
            self._forget_streak()

    def _in_refractory(self, now: float) -> bool:
        last = self._last_trigger_at
        return last is not None and now - last < self._settings.refractory_s

    def _heartbeat_due(self, now: float) -> bool:
        period = self._settings.heartbeat_s
        since = self._last_publish_at if self._last_publish_at is not None else self._started_at
        return period > 0 and since is not None and now - since >= period

    def _hit(self, outcome: Outcome) -> bool:
        if outcome.task == "anomaly":
            return bool(outcome.payload.get("anomaly", {}).get("is_anomaly", False))
        min_score = self._settings.min_score
        if outcome.task == "detection":
            return any(d["score"] >= min_score for d in outcome.payload.get("detections", []))
        return outcome.top_score is not None and outcome.top_score >= min_score

    def _key(self, outcome: Outcome) -> object:
        min_score = self._settings.min_score
        if outcome.task == "detection":
            detections = outcome.payload.get("detections", [])
            return frozenset(d["label"] for d in detections if d["score"] >= min_score)
        if outcome.task == "classification" and (outcome.top_score or 0.0) < min_score:
            return None
        return outcome.top_label


def _with_items(outcome: Outcome, key: str, items: list[dict[str, Any]]) -> Outcome:
    payload = {**outcome.payload, key: items}
    if not items:
        return Outcome(outcome.task, payload, None, None, None)
    best = max(items, key=lambda item: item["score"])
    return Outcome(outcome.task, payload, best["label"], best["index"], best["score"])
