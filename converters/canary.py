"""Canary rollout (``edge-convert deploy --canary N``): the first N devices get the bundle in
shadow mode with automatic promotion; once each has promoted it and published a health window
on the new model that is not an alarm, the rest get it the ordinary way. A canary that refuses
the candidate (its agreement, latency or golden self-test), raises an alarm (and rolls itself
back), or says nothing in time stops the rollout: the other devices are never touched, and the
table says where and why.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from .devices import DeviceResult

Push = Callable[[list[str], "dict[str, Any] | None"], list[DeviceResult]]


@dataclass(frozen=True)
class CanaryPlan:
    count: int
    frames: int = 200          # frames compared in shadow before the candidate may be promoted
    agreement: float = 0.95    # top-1 agreement with the serving model it needs
    every: int = 1             # every Nth frame also goes through the candidate
    timeout: float = 300.0     # for each canary to promote and report healthy

    def shadow_args(self) -> dict[str, Any]:
        return {"mode": "shadow", "promote": "auto", "every": self.every,
                "criteria": {"frames": self.frames, "agreement": self.agreement}}


@dataclass
class _Seen:
    shadow: list[dict[str, Any]] = field(default_factory=list)
    health: list[dict[str, Any]] = field(default_factory=list)


class Reports:
    """Live (not retained) shadow and health reports of the canaries."""

    def __init__(self, client: mqtt.Client, prefix: str, devices: list[str]) -> None:
        self._seen = {d: _Seen() for d in devices}
        self._cond = threading.Condition()
        for device in devices:
            for kind in ("shadow", "health"):
                topic = f"{prefix}/{device}/+/{kind}"
                client.message_callback_add(topic, self._on_message)
                client.subscribe(topic, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            return   # from before this rollout
        try:
            report = json.loads(msg.payload)
        except ValueError:
            return
        parts = msg.topic.split("/")
        seen = self._seen.get(parts[1])
        if seen is None or not isinstance(report, dict):
            return
        with self._cond:
            (seen.shadow if parts[-1] == "shadow" else seen.health).append(report)
            self._cond.notify_all()

    def verdict(self, device: str, model: dict[str, str], deadline: float) -> tuple[bool, str]:
        """(healthy?, why) once the device decided about ``model``, or at ``deadline``."""
        with self._cond:
            while True:
                found = self._judge(self._seen[device], model)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return False, self._late(self._seen[device], model)
                self._cond.wait(min(left, 0.5))

    @staticmethod
    def _judge(seen: _Seen, model: dict[str, str]) -> tuple[bool, str] | None:
        shadow = [r for r in seen.shadow if _same(r.get("candidate"), model)]
        final = next((r for r in shadow if r.get("state") in ("promoted", "refused",
                                                               "discarded")), None)
        if final is None:
            return None
        agreement = final.get("agreement")
        shown = f"{agreement:.1%}" if isinstance(agreement, float | int) else "-"
        if final.get("state") != "promoted":
            return False, f"shadow: {final.get('state')}: {final.get('reason')}"
        for report in seen.health:
            rollback = report.get("rollback")
            if isinstance(rollback, dict) and _same(rollback.get("from"), model):
                return False, f"rolled back on a health alarm: {rollback.get('reason')}"
            if not _same(report.get("model"), model) or _unjudged(report):
                continue
            if report.get("verdict") == "alarm":
                return False, f"health alarm: {'; '.join(report.get('reasons') or [])}"
            return True, (f"promoted (agreement {shown}), health {report.get('verdict')} in "
                          f"window {(report.get('window') or {}).get('index')}")
        return None

    @staticmethod
    def _late(seen: _Seen, model: dict[str, str]) -> str:
        shadow = [r for r in seen.shadow if _same(r.get("candidate"), model)]
        if not shadow:
            return "no shadow report in time"
        last = shadow[-1]
        if last.get("state") != "promoted":
            return (f"no shadow decision in time ({last.get('compared')} frame(s) compared, "
                    f"agreement {last.get('agreement')})")
        return "promoted, but no judged health window in time"


def _same(info: object, model: dict[str, str]) -> bool:
    if not isinstance(info, dict):
        return False
    return all(info.get(k) == v for k, v in model.items() if v)


def _unjudged(report: dict[str, Any]) -> bool:
    return any("not judged" in str(r) for r in report.get("reasons") or [])


def roll_out(client: mqtt.Client, targets: list[str], plan: CanaryPlan, *, push: Push,
             prefix: str, model: dict[str, str]) -> list[DeviceResult]:
    """Canaries first, in shadow; the rest once every canary is healthy."""
    canaries, rest = targets[:plan.count], targets[plan.count:]
    reports = Reports(client, prefix, canaries)
    started = time.monotonic()
    first = push(canaries, plan.shadow_args())
    deadline = time.monotonic() + plan.timeout
    for result in first:
        result.role = "canary"
        if not result.ok:
            continue
        healthy, why = reports.verdict(result.device, model, deadline)
        result.ok = healthy
        result.error = None if healthy else why
        result.reply = {**result.reply, "canary": why}
        result.seconds = round(time.monotonic() - started, 2)
    failed = [r for r in first if not r.ok]
    if failed:
        stop = f"not deployed: canary {failed[0].device} failed"
        return [*first, *(DeviceResult(d, ok=False, error=stop) for d in rest)]
    return [*first, *(push(rest, None) if rest else [])]
