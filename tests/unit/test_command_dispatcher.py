"""CommandDispatcher with a fake reply function: every message gets exactly one reply, refusals
are one clear line, and nothing a sender does escapes as an exception.

(Named apart from ``tests/e2e/test_commands.py``: test modules need unique basenames here.)
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from edge_runtime.control.dispatcher import (
    QUEUE_SIZE,
    CommandDispatcher,
    CommandRefused,
    TokenBucket,
    expect,
    only_keys,
)


class Replies:
    """The fake reply function: records (verb, reply) and can wait for a count."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()

    def __call__(self, verb: str, result: dict[str, Any]) -> None:
        with self._cond:
            self.sent.append((verb, json.loads(json.dumps(result))))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 5) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.sent) >= count, timeout)


def echo(args: dict[str, Any]) -> dict[str, Any]:
    return {"args": args}


def refuse(args: dict[str, Any]) -> dict[str, Any]:
    raise CommandRefused("not today")


def broken(args: dict[str, Any]) -> dict[str, Any]:
    raise KeyError("oops")


def dispatcher(replies: Replies, **kwargs: Any) -> CommandDispatcher:
    d = CommandDispatcher(replies, **kwargs)
    d.register("echo", echo)
    d.register("refuse", refuse)
    d.register("broken", broken)
    return d


@pytest.fixture
def replies() -> Replies:
    return Replies()


def test_a_valid_command_runs_its_handler_and_replies_ok(replies: Replies) -> None:
    d = dispatcher(replies)
    result = d.handle("echo", b'{"min_score": 0.6}')
    assert result == {"ok": True, "args": {"min_score": 0.6}}
    assert replies.sent == [("echo", result)]
    assert d.counters["handled"] == 1


def test_an_empty_payload_means_no_arguments(replies: Replies) -> None:
    assert dispatcher(replies).handle("echo", b"  ") == {"ok": True, "args": {}}


@pytest.mark.parametrize("request_id", ["abc-1", 7, 0])
def test_a_plain_id_is_echoed_and_not_passed_to_the_handler(replies: Replies,
                                                            request_id: Any) -> None:
    body = json.dumps({"id": request_id, "x": 1}).encode()
    assert dispatcher(replies).handle("echo", body) == {"ok": True, "args": {"x": 1},
                                                        "id": request_id}


@pytest.mark.parametrize("request_id", [True, None, {"a": 1}, [1], "x" * 200])
def test_an_id_that_is_not_plain_is_not_echoed(replies: Replies, request_id: Any) -> None:
    body = json.dumps({"id": request_id}).encode()
    assert "id" not in dispatcher(replies).handle("echo", body)


def test_a_refused_command_echoes_its_id_too(replies: Replies) -> None:
    result = dispatcher(replies).handle("refuse", b'{"id": "r1"}')
    assert result == {"ok": False, "error": "not today", "id": "r1"}


@pytest.mark.parametrize(("payload", "words"), [
    (b"not json", "payload is not valid JSON"),
    (b"\xff\xfe\xfa", "payload is not valid JSON"),
    (b'{"a": ', "payload is not valid JSON"),
    (b"[1, 2]", "must be a JSON object, got list"),
    (b'"text"', "must be a JSON object, got str"),
    (b"42", "must be a JSON object, got int"),
    (b"null", "must be a JSON object, got NoneType"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
])
def test_a_malformed_payload_is_refused_in_one_line(replies: Replies, payload: bytes,
                                                    words: str) -> None:
    d = dispatcher(replies)
    result = d.handle("echo", payload)
    assert result["ok"] is False and words in result["error"], result
    assert "\n" not in result["error"]
    assert d.counters["refused"] == 1 and d.counters["handled"] == 0


def test_an_oversized_payload_is_refused_before_parsing(replies: Replies) -> None:
    d = dispatcher(replies, max_payload_bytes=1000)
    result = d.handle("echo", json.dumps({"id": "big", "pad": "x" * 1000}).encode())
    assert result["ok"] is False
    assert "over the 1000-byte limit" in result["error"]
    assert "id" not in result  # never parsed, so no id to echo


def test_a_per_verb_payload_limit_overrides_the_default(replies: Replies) -> None:
    d = dispatcher(replies, max_payload_bytes=300)
    d.payload_limits["echo"] = 5000
    assert d.handle("echo", json.dumps({"pad": "x" * 1000}).encode())["ok"] is True
    assert d.handle("refuse", json.dumps({"pad": "x" * 1000}).encode())["error"].endswith(
        "300-byte limit")


def test_an_unknown_verb_is_refused_listing_the_known_ones(replies: Replies) -> None:
    result = dispatcher(replies).handle("explode", b'{"id": 3}')
    assert result["ok"] is False and result["id"] == 3
    assert "'explode'" in result["error"]
    assert "broken, echo, refuse" in result["error"]


def test_a_long_unknown_verb_is_cut_in_the_error(replies: Replies) -> None:
    result = dispatcher(replies).handle("v" * 5000, b"")
    assert result["ok"] is False and len(result["error"]) < 300


def test_a_handler_bug_becomes_an_error_reply(replies: Replies) -> None:
    d = dispatcher(replies)
    result = d.handle("broken", b'{"id": "b"}')
    assert result["ok"] is False and result["id"] == "b"
    assert result["error"].startswith("internal error: KeyError")
    assert d.handle("echo", b"")["ok"] is True  # and the next command still works


def test_a_failing_reply_function_does_not_raise() -> None:
    def unreachable(verb: str, result: dict[str, Any]) -> None:
        raise ConnectionError("broker gone")

    d = CommandDispatcher(unreachable)
    d.register("echo", echo)
    assert d.handle("echo", b"")["ok"] is True


# ----- rate limiting ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr("edge_runtime.control.dispatcher.time.monotonic", fake)
    return fake


def test_commands_beyond_the_burst_are_rate_limited(replies: Replies, clock: FakeClock) -> None:
    d = dispatcher(replies, rate_per_s=1.0, burst=3)
    outcomes = [d.handle("echo", b'{"id": 1}') for _ in range(5)]
    assert [o["ok"] for o in outcomes] == [True, True, True, False, False]
    assert outcomes[3]["error"].startswith("rate limited")
    assert d.counters["rate_limited"] == 2
    assert len(replies.sent) == 5  # a limited command still gets its reply


def test_the_bucket_refills_with_time(replies: Replies, clock: FakeClock) -> None:
    d = dispatcher(replies, rate_per_s=2.0, burst=2)
    assert all(d.handle("echo", b"")["ok"] for _ in range(2))
    assert d.handle("echo", b"")["ok"] is False
    clock.now += 0.5
    assert d.handle("echo", b"")["ok"] is True
    assert d.handle("echo", b"")["ok"] is False
    clock.now += 100  # a long pause refills to the burst, not beyond
    assert [d.handle("echo", b"")["ok"] for _ in range(3)] == [True, True, False]


def test_an_unmetered_verb_is_never_rate_limited(replies: Replies, clock: FakeClock) -> None:
    d = dispatcher(replies, rate_per_s=1.0, burst=1)
    d.unmetered.add("echo")
    assert all(d.handle("echo", b"")["ok"] for _ in range(10))
    assert d.handle("refuse", b"")["error"] == "not today"
    assert d.handle("refuse", b"")["error"].startswith("rate limited")


def test_the_token_bucket_starts_full(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=1.0, burst=4)
    assert [bucket.take() for _ in range(5)] == [True] * 4 + [False]


# ----- the command thread ------------------------------------------------------------------


def test_submitted_commands_are_answered_on_the_command_thread(replies: Replies) -> None:
    d = dispatcher(replies)
    d.start()
    try:
        for n in range(20):
            d.submit("echo", json.dumps({"id": n}).encode())
        d.submit("broken", b"")
        d.submit("echo", b"garbage")
        assert replies.wait_for(22)
    finally:
        d.stop()
    assert [r["id"] for _, r in replies.sent[:20]] == list(range(20))
    assert [r["ok"] for _, r in replies.sent[20:]] == [False, False]


def test_a_full_queue_drops_and_counts_without_blocking(replies: Replies) -> None:
    d = dispatcher(replies)  # not started: nothing drains the queue
    extra = 30
    for _ in range(QUEUE_SIZE + extra):
        d.submit("echo", b"")
    assert d.counters["received"] == QUEUE_SIZE + extra
    assert d.counters["dropped"] == extra
    assert replies.sent == []


# ----- argument helpers ------------------------------------------------------------------------


def test_expect_reads_checks_and_refuses() -> None:
    args: dict[str, Any] = {"bundle": "/b", "n": 3, "flag": True}
    assert expect(args, "bundle", str) == "/b"
    assert expect(args, "absent", str) is None
    with pytest.raises(CommandRefused, match="missing 'absent'"):
        expect(args, "absent", str, required=True)
    with pytest.raises(CommandRefused, match=r"'bundle' has the wrong type \(str\)"):
        expect(args, "bundle", int)
    with pytest.raises(CommandRefused, match="got a boolean"):
        expect(args, "flag", (int, float))
    assert expect(args, "n", (int, float)) == 3


def test_only_keys_names_the_unknown_ones() -> None:
    only_keys({"pipeline": "a"}, {"pipeline"})
    with pytest.raises(CommandRefused, match=r"unknown field.*colour, size"):
        only_keys({"pipeline": "a", "size": 1, "colour": 2}, {"pipeline"})
