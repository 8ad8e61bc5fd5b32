"""Wire messages and the topic tree."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_runtime.publish.payloads import (
    FrameInfo,
    ModelInfo,
    PayloadError,
    ResultMessage,
    StatusMessage,
    Timing,
)
from edge_runtime.publish.topics import Topics


def make_result(**changes: Any) -> ResultMessage:
    fields: dict[str, Any] = {
        "device": "pi-1",
        "pipeline": "default",
        "seq": 42,
        "ts": 1763780000.123,
        "model": ModelInfo("digits", "1", "ab" * 32),
        "frame": FrameInfo(41, "digit_3/0001.png", 1763780000.101),
        "task": "classification",
        "output": {"predictions": [{"label": "digit_3", "index": 3, "score": 0.97}]},
        "timing_ms": Timing(0.2, 1.1, 0.05, 1.5),
    }
    fields.update(changes)
    return ResultMessage(**fields)


# Results ---------------------------------------------------------------------------------------


def test_result_payload_matches_the_spec_example() -> None:
    payload = json.loads(make_result().to_json())
    assert payload == {
        "schema": "edge-result/1", "device": "pi-1", "pipeline": "default", "seq": 42,
        "ts": 1763780000.123,
        "model": {"name": "digits", "version": "1", "sha256": "ab" * 32},
        "frame": {"index": 41, "ref": "digit_3/0001.png", "captured_at": 1763780000.101},
        "task": "classification",
        "predictions": [{"label": "digit_3", "index": 3, "score": 0.97}],
        "timing_ms": {"preprocess": 0.2, "inference": 1.1, "postprocess": 0.05, "total": 1.5},
    }
    assert list(payload)[:8] == ["schema", "device", "pipeline", "seq", "ts", "model", "frame",
                                 "task"]
    assert list(payload)[-1] == "timing_ms"


def test_result_json_is_compact_utf8() -> None:
    raw = make_result(frame=FrameInfo(0, "café/ü.png", 1.0)).to_json()
    assert b", " not in raw and b": " not in raw
    assert "café/ü.png".encode() in raw


def test_result_round_trips_through_json() -> None:
    message = make_result(
        task="detection",
        output={"detections": [{"label": "cat", "index": 0, "score": 0.5,
                                "box": [0.1, 0.2, 0.3, 0.4]}]},
    )
    assert ResultMessage.from_payload(message.to_json()) == message


def test_build_sets_seq_without_changing_the_message() -> None:
    message = make_result(seq=0)
    assert json.loads(message.build(7))["seq"] == 7
    assert message.seq == 0


def test_timing_is_rounded_to_microseconds() -> None:
    payload = make_result(timing_ms=Timing(0.123456, 1.0, 2.0, 3.1234567)).to_payload()
    assert payload["timing_ms"]["preprocess"] == 0.123
    assert payload["timing_ms"]["total"] == 3.123


def test_numpy_values_become_plain_json() -> None:
    output = {"values": np.array([1.5, 2.5], dtype=np.float32), "n": np.int64(3)}
    payload = json.loads(make_result(task="regression", output=output).to_json())
    assert payload["values"] == [1.5, 2.5]
    assert payload["n"] == 3


def test_nan_is_refused_in_one_line() -> None:
    with pytest.raises(PayloadError) as info:
        make_result(output={"values": [float("nan")]}).to_json()
    assert "\n" not in str(info.value)


def test_output_cannot_overwrite_envelope_keys() -> None:
    with pytest.raises(PayloadError, match="seq"):
        make_result(output={"seq": 1})


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.update(schema="edge-result/2"), "schema"),
        (lambda p: p.pop("device"), "'device'"),
        (lambda p: p.update(seq="42"), "'seq' must be int"),
        (lambda p: p.update(seq=True), "'seq' must be int"),
        (lambda p: p["frame"].pop("ref"), "'frame' has no 'ref'"),
        (lambda p: p["timing_ms"].update(total="slow"), "'total' must be float"),
        (lambda p: p.update(model=[]), "'model' must be dict"),
    ],
)
def test_bad_result_payloads_name_the_problem(mutate: Any, message: str) -> None:
    payload = make_result().to_payload()
    mutate(payload)
    with pytest.raises(PayloadError, match=message):
        ResultMessage.from_payload(json.dumps(payload).encode())


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b"\xff\xfe"])
def test_undecodable_results_raise_payload_error(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        ResultMessage.from_payload(raw)


@given(
    seq=st.integers(0, 2**53),
    ref=st.text(max_size=40),
    score=st.floats(0, 1, allow_nan=False),
    ts=st.floats(0, 4e9, allow_nan=False),
)
def test_any_result_round_trips(seq: int, ref: str, score: float, ts: float) -> None:
    message = make_result(
        seq=seq, ts=ts, frame=FrameInfo(seq, ref, ts),
        output={"predictions": [{"label": ref, "index": 0, "score": score}]},
    )
    assert ResultMessage.from_payload(message.to_json()) == message


# Status, metrics, replies ----------------------------------------------------------------------


def test_status_keeps_extras_and_drops_unset_fields() -> None:
    status = StatusMessage("degraded", ts=5.0, reason="camera lost", extra={"fps": 9.5})
    assert json.loads(status.to_json()) == {
        "state": "degraded", "reason": "camera lost", "ts": 5.0, "fps": 9.5,
    }
    assert StatusMessage.from_payload(status.to_json()) == status


def test_status_state_must_be_known() -> None:
    with pytest.raises(PayloadError, match="online, degraded, offline"):
        StatusMessage.from_payload(b'{"state": "sleepy"}')


def test_status_pipelines_may_be_a_list_or_a_map() -> None:
    as_list = StatusMessage("online", pipelines=["a", "b"])
    as_map = StatusMessage("online", pipelines={"a": "paused"})
    assert StatusMessage.from_payload(as_list.to_json()).pipelines == ["a", "b"]
    assert StatusMessage.from_payload(as_map.to_json()).pipelines == {"a": "paused"}
    with pytest.raises(PayloadError, match="pipelines"):
        StatusMessage.from_payload(b'{"state": "online", "pipelines": 3}')


# Topics ----------------------------------------------------------------------------------------


def test_topic_tree() -> None:
    t = Topics("pi-1")
    assert t.result("default") == "edge/pi-1/default/result"
    assert t.status == "edge/pi-1/status"
    assert t.metrics == "edge/pi-1/metrics"
    assert t.cmd("reload") == "edge/pi-1/cmd/reload"
    assert t.reply("reload") == "edge/pi-1/cmd/reload/reply"
    assert t.cmd_filter == "edge/pi-1/cmd/#"
    assert Topics("cam", prefix="site7").status == "site7/cam/status"


@pytest.mark.parametrize(
    ("topic", "verb"),
    [
        ("edge/pi-1/cmd/pause", "pause"),
        ("edge/pi-1/cmd/snapshot-metrics", "snapshot-metrics"),
        ("edge/pi-1/cmd/pause/reply", None),
        ("edge/pi-1/cmd/", None),
        ("edge/pi-2/cmd/pause", None),
        ("edge/pi-1/status", None),
        ("other/pi-1/cmd/pause", None),
    ],
)
def test_verb_of(topic: str, verb: str | None) -> None:
    assert Topics("pi-1").verb_of(topic) == verb


@pytest.mark.parametrize("device", ["", "a/b", "a+b", "a#", "x\x00"])
def test_device_ids_that_break_topics_are_refused(device: str) -> None:
    with pytest.raises(ValueError, match="device id"):
        Topics(device)


def test_pipeline_names_that_break_topics_are_refused() -> None:
    with pytest.raises(ValueError, match="pipeline name 'a/b'"):
        Topics("pi").result("a/b")
