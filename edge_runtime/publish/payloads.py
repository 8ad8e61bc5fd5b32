"""Typed wire messages: what goes out on result, status, metrics and reply topics.

Each message is a dataclass with ``to_payload()`` (a plain dict), ``to_json()`` (compact UTF-8
JSON bytes) and ``from_payload()`` (bytes, str or dict back to the dataclass, raising
:class:`PayloadError` with one line naming what is wrong).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast, get_args

RESULT_SCHEMA = "edge-result/1"
State = Literal["online", "degraded", "offline"]
STATES: tuple[str, ...] = get_args(State)

T = TypeVar("T")


class PayloadError(ValueError):
    """A wire message that cannot be encoded or decoded; the message is one line."""


def _plain(value: object) -> object:
    # NumPy scalars and arrays reach us from post-processing; both know how to become plain.
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact JSON bytes; NaN and infinity are refused because JSON has no such numbers."""
    try:
        text = json.dumps(
            payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_plain
        )
    except ValueError as exc:
        raise PayloadError(f"message holds a value JSON cannot carry: {exc}") from None
    except TypeError as exc:
        raise PayloadError(f"message holds a value JSON cannot carry: {exc}") from None
    return text.encode()


def decode(data: bytes | str | Mapping[str, Any], what: str = "message") -> dict[str, Any]:
    """A JSON object as a dict, from bytes, text or an already decoded mapping."""
    if isinstance(data, Mapping):
        return dict(data)
    try:
        obj = json.loads(data)
    except UnicodeDecodeError:
        raise PayloadError(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _field(data: Mapping[str, Any], key: str, kind: type[T], where: str) -> T:
    if key not in data:
        raise PayloadError(f"{where} has no '{key}'")
    value = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return cast(T, float(value))
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise PayloadError(f"{where} '{key}' must be {kind.__name__}, got {type(value).__name__}")
    return value


def _optional(data: Mapping[str, Any], key: str, kind: type[T], where: str) -> T | None:
    if data.get(key) is None:
        return None
    return _field(data, key, kind, where)


def _check_no_clash(extra: Mapping[str, Any], reserved: frozenset[str], where: str) -> None:
    clash = sorted(reserved.intersection(extra))
    if clash:
        raise PayloadError(f"{where} must not set reserved key(s): {', '.join(clash)}")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    version: str
    sha256: str

    def to_payload(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> ModelInfo:
        where = "result 'model'"
        return cls(
            name=_field(data, "name", str, where),
            version=_field(data, "version", str, where),
            sha256=_field(data, "sha256", str, where),
        )


@dataclass(frozen=True, slots=True)
class FrameInfo:
    index: int
    ref: str
    captured_at: float

    def to_payload(self) -> dict[str, Any]:
        return {"index": self.index, "ref": self.ref, "captured_at": self.captured_at}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> FrameInfo:
        where = "result 'frame'"
        return cls(
            index=_field(data, "index", int, where),
            ref=_field(data, "ref", str, where),
            captured_at=_field(data, "captured_at", float, where),
        )


@dataclass(frozen=True, slots=True)
class Timing:
    """Milliseconds spent per stage of one result."""

    preprocess: float
    inference: float
    postprocess: float
    total: float

    def to_payload(self) -> dict[str, Any]:
        return {
            "preprocess": round(self.preprocess, 3),
            "inference": round(self.inference, 3),
            "postprocess": round(self.postprocess, 3),
            "total": round(self.total, 3),
        }

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> Timing:
        where = "result 'timing_ms'"
        return cls(*(_field(data, k, float, where) for k in _TIMING_KEYS))


_TIMING_KEYS = ("preprocess", "inference", "postprocess", "total")
_RESULT_KEYS = frozenset(
    {"schema", "device", "pipeline", "seq", "ts", "model", "frame", "task", "timing_ms"}
)


@dataclass(slots=True)
class ResultMessage:
    """One result (``schema: edge-result/1``).

    ``output`` is the task's own part, merged at the top level: ``predictions``, ``detections``,
    ``values`` or ``anomaly``.
    """

    device: str
    pipeline: str
    seq: int
    ts: float
    model: ModelInfo
    frame: FrameInfo
    task: str
    output: dict[str, Any]
    timing_ms: Timing

    def __post_init__(self) -> None:
        _check_no_clash(self.output, _RESULT_KEYS, "result output")

    def to_payload(self) -> dict[str, Any]:
        return {
            "schema": RESULT_SCHEMA,
            "device": self.device,
            "pipeline": self.pipeline,
            "seq": self.seq,
            "ts": self.ts,
            "model": self.model.to_payload(),
            "frame": self.frame.to_payload(),
            "task": self.task,
            **self.output,
            "timing_ms": self.timing_ms.to_payload(),
        }

    def to_json(self) -> bytes:
        return encode(self.to_payload())

    def build(self, seq: int) -> bytes:
        """This message's JSON with ``seq`` set; made to be handed to ``Outbox.append``."""
        payload = self.to_payload()
        payload["seq"] = seq
        return encode(payload)

    @classmethod
    def from_payload(cls, data: bytes | str | Mapping[str, Any]) -> ResultMessage:
        obj = decode(data, "result")
        where = "result"
        schema = obj.get("schema")
        if schema != RESULT_SCHEMA:
            raise PayloadError(f"result schema must be {RESULT_SCHEMA!r}, got {schema!r}")
        return cls(
            device=_field(obj, "device", str, where),
            pipeline=_field(obj, "pipeline", str, where),
            seq=_field(obj, "seq", int, where),
            ts=_field(obj, "ts", float, where),
            model=ModelInfo.from_payload(_field(obj, "model", dict, where)),
            frame=FrameInfo.from_payload(_field(obj, "frame", dict, where)),
            task=_field(obj, "task", str, where),
            output={k: v for k, v in obj.items() if k not in _RESULT_KEYS},
            timing_ms=Timing.from_payload(_field(obj, "timing_ms", dict, where)),
        )


_STATUS_KEYS = frozenset({"state", "reason", "ts", "device", "version", "pipelines"})


@dataclass(slots=True)
class StatusMessage:
    """The retained device status; ``extra`` carries any further keys at the top level."""

    state: State
    ts: float | None = None
    reason: str | None = None
    device: str | None = None
    version: str | None = None
    pipelines: list[str] | dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state not in STATES:
            allowed = ", ".join(STATES)
            raise PayloadError(f"status state must be one of {allowed}, got {self.state!r}")
        _check_no_clash(self.extra, _STATUS_KEYS, "status extra")

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"state": self.state}
        optional = {
            "reason": self.reason,
            "ts": self.ts,
            "device": self.device,
            "version": self.version,
            "pipelines": self.pipelines,
        }
        payload.update((k, v) for k, v in optional.items() if v is not None)
        payload.update(self.extra)
        return payload

    def to_json(self) -> bytes:
        return encode(self.to_payload())

    @classmethod
    def from_payload(cls, data: bytes | str | Mapping[str, Any]) -> StatusMessage:
        obj = decode(data, "status")
        where = "status"
        pipelines = obj.get("pipelines")
        if pipelines is not None and not isinstance(pipelines, list | dict):
            raise PayloadError("status 'pipelines' must be a list or an object")
        return cls(
            state=cast(State, _field(obj, "state", str, where)),
            ts=_optional(obj, "ts", float, where),
            reason=_optional(obj, "reason", str, where),
            device=_optional(obj, "device", str, where),
            version=_optional(obj, "version", str, where),
            pipelines=pipelines,
            extra={k: v for k, v in obj.items() if k not in _STATUS_KEYS},
        )
