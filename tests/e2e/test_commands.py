"""Commands on ``edge/D/cmd/VERB`` against the running daemon: pause, resume, set, reload,
rollback, refusals, fuzzing and a flood. Every command gets a reply; none takes the daemon down."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.daemon import (
    Commander,
    DaemonProcess,
    Mosquitto,
    Subscriber,
    copy_bundle,
    new_device,
    result_topic,
    results,
    results_after,
    wait_for,
)

pytestmark = pytest.mark.mosquitto

CONFIG = """\
device_id: {device}
state_dir: {state}
mqtt:
  url: {url}
commands:
  rate_per_s: 500
  burst: 500
  bundle_roots: [{bundles}]
pipelines:
  - name: default
    bundle: {bundle}
    source: {source}
    fps: 20
    loop: true
"""
DEFAULTS = {"mode": "every", "min_score": 0.0, "trigger_count": 1, "refractory_s": 0.0,
            "heartbeat_s": 0.0}


@dataclass
class Device:
    name: str
    daemon: DaemonProcess
    sub: Subscriber
    cmd: Commander
    bundles: Path

    def results_after(self, since: float, skip: int = 1) -> list[dict[str, Any]]:
        return results_after(self.sub, self.name, since, skip)

    def wait_results_after(self, since: float, count: int, timeout: float = 15,
                           ) -> list[dict[str, Any]]:
        arrived = wait_for(lambda: len(self.results_after(since)) >= count, timeout)
        assert arrived, f"fewer than {count} results after the command\n{self.daemon.tail()}"
        return self.results_after(since)

    def ok(self, verb: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = self.cmd.request(verb, body)
        assert reply["ok"] is True, f"{verb} {body}: {reply}\n{self.daemon.tail()}"
        return reply

    def refused(self, verb: str, body: dict[str, Any] | None = None) -> str:
        reply = self.cmd.request(verb, body)
        assert reply["ok"] is False, f"{verb} {body} was accepted: {reply}"
        assert isinstance(reply["error"], str) and reply["error"]
        assert not reply["error"].startswith("internal error"), reply
        return str(reply["error"])


@pytest.fixture(scope="module")
def device(broker: Mosquitto, digits: Path, digits_bundle: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    """One daemon serving bundle v1 on a paced, looping folder, for the whole module."""
    root = tmp_path_factory.mktemp("commands")
    bundles = root / "bundles"
    bundles.mkdir()
    v1 = copy_bundle(digits_bundle, bundles / "digits-v1")
    copy_bundle(digits_bundle, bundles / "digits-v2", version="2")
    tampered = copy_bundle(digits_bundle, bundles / "digits-tampered", version="3")
    model = bytearray((tampered / "model.tflite").read_bytes())
    model[len(model) // 2] ^= 0xFF
    (tampered / "model.tflite").write_bytes(bytes(model))
    name = new_device("cmd")
    config = root / "config.yaml"
    config.write_text(CONFIG.format(device=name, state=root / "state", url=broker.url,
                                    bundle=v1, source=digits / "images" / "val",
                                    bundles=bundles))
    with Subscriber(broker, f"edge/{name}/#") as sub, \
            DaemonProcess(["--config", str(config)], root) as daemon:
        assert sub.wait_for(3, 30, result_topic(name)), daemon.tail()
        yield Device(name, daemon, sub, Commander(sub, name), bundles)


def versions(found: list[dict[str, Any]]) -> set[str]:
    return {r["model"]["version"] for r in found}


# ----- pause, resume, set --------------------------------------------------------------------


def test_pause_stops_results_and_resume_brings_them_back(device: Device) -> None:
    reply = device.ok("pause", {})
    assert reply["paused"] == ["default"]
    paused_at = time.time()
    came = wait_for(lambda: bool(device.results_after(paused_at)), 1.5)
    assert not came, f"results kept coming while paused: {device.results_after(paused_at)}"

    reply = device.ok("resume", {"pipeline": "default"})
    assert reply["resumed"] == ["default"]
    device.wait_results_after(time.time(), 3)


def test_set_min_score_drops_low_predictions(device: Device) -> None:
    scores = [p["score"] for r in results(device.sub, device.name) for p in r["predictions"]]
    assert min(scores) < 0.6, "nothing to filter: every prediction already scores high"

    reply = device.ok("set", {"min_score": 0.6})
    assert reply["settings"]["default"]["min_score"] == 0.6
    later = device.wait_results_after(time.time(), 5)
    assert all(p["score"] >= 0.6 for r in later for p in r["predictions"]), later
    device.ok("set", DEFAULTS)


def test_set_mode_threshold_publishes_only_confident_results(device: Device) -> None:
    reply = device.ok("set", {"mode": "threshold", "min_score": 0.9})
    assert reply["settings"]["default"]["mode"] == "threshold"
    later = device.wait_results_after(time.time(), 5)
    assert all(max(p["score"] for p in r["predictions"]) >= 0.9 for r in later), later
    reply = device.ok("set", DEFAULTS)
    assert reply["settings"]["default"] == DEFAULTS


@pytest.mark.parametrize(("body", "key"), [
    ({"min_score": 2}, "min_score"),
    ({"min_score": "high"}, "min_score"),
    ({"min_score": True}, "min_score"),
    ({"mode": "sometimes"}, "mode"),
    ({"trigger_count": 0}, "trigger_count"),
    ({"colour": "red"}, "colour"),
    ({"pipeline": "nope", "min_score": 0.5}, "nope"),
])
def test_bad_settings_are_refused_naming_the_key(device: Device, body: dict[str, Any],
                                                 key: str) -> None:
    assert key in device.refused("set", body)


def test_a_refused_set_changes_nothing(device: Device) -> None:
    device.refused("set", {"min_score": 0.7, "mode": "bogus"})
    later = device.wait_results_after(time.time(), 3)
    # min_score 0.7 did not slip in: the runner-up predictions scoring 0 are still there.
    assert any(p["score"] < 0.7 for r in later for p in r["predictions"]), later


# ----- reload and rollback -------------------------------------------------------------------


def test_reload_switches_the_model_and_rollback_returns(device: Device) -> None:
    reply = device.ok("reload", {"bundle": str(device.bundles / "digits-v2")})
    assert reply["model"]["version"] == "2" and reply["previous"]["version"] == "1"
    assert versions(device.wait_results_after(time.time(), 3)) == {"2"}

    reply = device.ok("rollback", {})
    assert reply["model"]["version"] == "1"
    assert versions(device.wait_results_after(time.time(), 3)) == {"1"}

    device.ok("reload", {"bundle": str(device.bundles / "digits-v2")})
    assert versions(device.wait_results_after(time.time(), 3)) == {"2"}


@pytest.mark.parametrize(("bundle", "words"), [
    ("digits-tampered", "sha256"),
    ("not-there", "does not exist"),
    ("/etc", "outside"),
    ("../../../../etc/passwd", "outside"),
])
def test_a_bad_reload_is_refused_and_the_old_model_keeps_serving(
        device: Device, bundle: str, words: str) -> None:
    before = device.wait_results_after(time.time(), 1, timeout=10)[-1]["model"]
    path = bundle if bundle.startswith("/") else str(device.bundles / bundle)
    assert words in device.refused("reload", {"bundle": path})
    later = device.wait_results_after(time.time(), 3)
    assert {json.dumps(r["model"], sort_keys=True) for r in later} == \
        {json.dumps(before, sort_keys=True)}


def test_reload_without_a_bundle_is_refused(device: Device) -> None:
    assert "bundle" in device.refused("reload", {})
    assert "bundle" in device.refused("reload", {"bundle": 42})


# ----- replies -------------------------------------------------------------------------------


def test_an_unknown_verb_is_refused_with_the_known_ones(device: Device) -> None:
    error = device.refused("explode", {})
    assert "explode" in error and "pause" in error


def test_every_reply_echoes_a_plain_id(device: Device) -> None:
    device.cmd.send("snapshot-metrics", json.dumps({"id": 4242}).encode())
    reply = device.cmd.reply_for(4242, 10)
    assert reply is not None and reply["ok"] is True
    assert reply["metrics"]["pipelines"]["default"]["results"] > 0


@pytest.mark.parametrize(("payload", "words"), [
    (b"not json at all", "not valid JSON"),
    (b"[1, 2, 3]", "JSON object"),
    (b"\xff\xfe\x00", "not valid JSON"),
    (b"[" * 20_000 + b"]" * 20_000, "nested too deeply"),
    (json.dumps({"bundle": "x" * 100_000}).encode(), "limit"),
])
def test_a_malformed_payload_gets_an_error_reply(device: Device, payload: bytes,
                                                 words: str) -> None:
    before = len(device.cmd.replies("reload"))
    device.cmd.send("reload", payload)
    assert wait_for(lambda: len(device.cmd.replies("reload")) > before, 10), device.daemon.tail()
    reply = device.cmd.replies("reload")[before]
    assert reply["ok"] is False and words in reply["error"], reply


# ----- fuzzing and flooding ------------------------------------------------------------------

KNOWN_VERBS = ["pause", "resume", "set", "reload", "rollback", "snapshot-metrics", "deploy"]
KEYS = ["min_score", "mode", "trigger_count", "refractory_s", "heartbeat_s", "bundle",
        "pipeline", "chunk", "index", "total", "sha256", "data"]
verb_text = st.text(st.characters(whitelist_categories=("Lu", "Ll", "Nd"), max_codepoint=0x2FFF)
                    | st.sampled_from("-_.:"), min_size=1, max_size=24)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
objects = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), json_values, max_size=5)
raw_payloads = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 800 + b"1" + b"}" * 800,
                     b'{"bundle": "' + b"a" * 1_000_000 + b'"}']),
)


def test_fuzzed_commands_never_take_the_daemon_down(device: Device) -> None:
    expected: list[str] = []

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(verb=st.sampled_from(KNOWN_VERBS) | verb_text,
           payload=objects.map(lambda o: ("object", o)) | raw_payloads.map(lambda b: ("raw", b)))
    def send(verb: str, payload: tuple[str, Any]) -> None:
        kind, body = payload
        if kind == "object":
            request_id = f"fz-{len(expected)}-{time.monotonic_ns()}"
            data = json.dumps({**body, "id": request_id}).encode()
            if verb != "deploy" and len(data) <= 65536:
                expected.append(request_id)
        else:
            data = body
        device.cmd.send(verb, data)

    send()
    assert device.daemon.alive, device.daemon.tail()
    missing_ids = [i for i in expected if device.cmd.reply_for(i, 20) is None]
    assert not missing_ids, f"{len(missing_ids)} of {len(expected)} commands got no reply\n" \
        f"{device.daemon.tail()}"
    internal = [m.json() for m in device.sub.messages() if m.topic.endswith("/reply")
                and str(m.json().get("error", "")).startswith("internal error")]
    assert not internal, internal[:3]

    # Whatever the fuzz paused, set or rolled back: put it right, then results must flow.
    device.ok("resume", {})
    device.ok("set", DEFAULTS)
    device.wait_results_after(time.time(), 5)


def test_a_flood_is_rate_limited_or_dropped_never_fatal(device: Device) -> None:
    flood = 3000
    for n in range(flood):
        device.cmd.send("set", json.dumps({"nonsense": n}).encode(), qos=0)

    def limited() -> int:
        return sum("rate limited" in str(r.get("error")) for r in device.cmd.replies("set"))

    wait_for(lambda: limited() > 0, 10)
    metrics = device.ok("snapshot-metrics", {})["metrics"]["commands"]
    assert limited() > 0 or metrics["dropped"] > 0, metrics
    assert metrics["rate_limited"] + metrics["dropped"] > 0, metrics
    assert device.daemon.alive, device.daemon.tail()
    device.wait_results_after(time.time(), 3)


def test_the_daemon_outlived_every_command_and_stops_cleanly(device: Device) -> None:
    assert device.daemon.alive, device.daemon.tail()
    assert device.daemon.terminate() == 0, device.daemon.tail()
    assert "Traceback" not in device.daemon.stderr(), device.daemon.tail(80)
