"""MqttLink + Outbox against a real Mosquitto: ordering, restarts, kills, status, auth, TLS."""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support.mosquitto import (
    Mosquitto,
    Received,
    Subscriber,
    TcpProxy,
    free_port,
    publish_once,
    read_retained,
)

from edge_runtime.publish import (
    FrameInfo,
    ModelInfo,
    MqttLink,
    MqttSettings,
    Outbox,
    ResultMessage,
    Timing,
    Topics,
)
from edge_runtime.publish.payloads import encode

pytestmark = pytest.mark.mosquitto

FAST: dict[str, Any] = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.3}
STREAM = "default"


def result_for(topics: Topics, index: int) -> ResultMessage:
    return ResultMessage(
        device=topics.device, pipeline=STREAM, seq=0, ts=time.time(),
        model=ModelInfo("digits", "1", "0" * 64),
        frame=FrameInfo(index, f"{index:04d}.png", time.time()),
        task="classification",
        output={"predictions": [{"label": "3", "index": 3, "score": 0.9}]},
        timing_ms=Timing(0.1, 1.0, 0.1, 1.2),
    )


def append(outbox: Outbox, topics: Topics, link: MqttLink | None, count: int) -> list[int]:
    seqs = []
    for index in range(count):
        seqs.append(outbox.append(STREAM, topics.result(STREAM), result_for(topics, index).build))
        if link is not None:
            link.wake()
    return seqs


def seqs_seen(sub: Subscriber, topics: Topics) -> list[int]:
    return [p["seq"] for p in sub.payloads(topics.result(STREAM))]


def wait_for_seqs(sub: Subscriber, topics: Topics, wanted: set[int], timeout: float = 15) -> None:
    topic = topics.result(STREAM)
    arrived = sub.wait_until(lambda msgs: wanted <= {m.json()["seq"] for m in msgs}, timeout, topic)
    missing = wanted - set(seqs_seen(sub, topics))
    assert arrived, f"{len(missing)} results never arrived, first {sorted(missing)[:10]}"


def last_state(messages: list[Received]) -> str | None:
    return messages[-1].json()["state"] if messages else None


def wait_until(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@contextmanager
def running_link(
    settings: MqttSettings, topics: Topics, outbox: Outbox, **kwargs: Any
) -> Iterator[MqttLink]:
    link = MqttLink(settings, topics, outbox, **kwargs)
    link.start()
    try:
        yield link
    finally:
        link.stop(drain_timeout=2)


# Delivery --------------------------------------------------------------------------------------


def test_results_arrive_in_order_with_seq(mosquitto: Mosquitto, tmp_path: Path) -> None:
    topics = Topics("dev-order")
    with Subscriber(mosquitto, topics.result(STREAM)) as sub, Outbox(tmp_path / "o.db") as outbox:
        link = MqttLink(mosquitto.settings(**FAST), topics, outbox)
        link.start()
        append(outbox, topics, link, 500)
        assert sub.wait_for(500, 15, topics.result(STREAM))
        assert seqs_seen(sub, topics) == list(range(1, 501))
        assert link.stop() == 0
        assert outbox.depth() == 0
        first = sub.payloads(topics.result(STREAM))[0]
        assert ResultMessage.from_payload(first).device == "dev-order"


def test_broker_restart_mid_stream_loses_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    topics = Topics("dev-restart")
    with (
        Subscriber(mosquitto, topics.result(STREAM)) as sub,
        Outbox(tmp_path / "o.db") as outbox,
        running_link(mosquitto.settings(**FAST), topics, outbox) as link,
    ):
        for index in range(400):
            append(outbox, topics, link, 1)
            if index == 150:
                mosquitto.stop()
            if index == 250:
                mosquitto.start()
            time.sleep(0.002)
        wait_for_seqs(sub, topics, set(range(1, 401)))
        assert link.counters["reconnects"] >= 1
        assert wait_until(lambda: outbox.depth() == 0)


def test_a_broker_that_restarts_during_the_shutdown_drain_still_gets_everything(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    topics = Topics("dev-drain")
    with Subscriber(mosquitto, topics.result(STREAM)) as sub, Outbox(tmp_path / "o.db") as outbox:
        link = MqttLink(mosquitto.settings(**FAST), topics, outbox)
        link.start()
        assert wait_until(lambda: link.connected)
        mosquitto.stop()
        append(outbox, topics, link, 50)
        restart = threading.Timer(1.0, mosquitto.start)
        restart.start()
        try:
            left = link.stop(drain_timeout=15)
        finally:
            restart.join()
        assert left == 0 and outbox.depth() == 0
        wait_for_seqs(sub, topics, set(range(1, 51)))


def test_network_cut_resends_what_was_in_flight(mosquitto: Mosquitto, tmp_path: Path) -> None:
    topics = Topics("dev-cut")
    proxy = TcpProxy(mosquitto.host, mosquitto.port).start()
    settings = MqttSettings(host=mosquitto.host, port=proxy.port, **FAST)
    try:
        with (
            Subscriber(mosquitto, topics.result(STREAM)) as sub,
            Outbox(tmp_path / "o.db") as outbox,
            running_link(settings, topics, outbox) as link,
        ):
            append(outbox, topics, link, 50)
            wait_for_seqs(sub, topics, set(range(1, 51)))
            # The broker's acks for these may still be on their way back; let them land first.
            assert wait_until(lambda: outbox.depth() == 0)
            proxy.blackhole(True)  # these 30 leave the device but never reach the broker
            append(outbox, topics, link, 30)
            assert wait_until(lambda: link.counters["published"] >= 80)
            assert wait_until(lambda: outbox.depth() == 30), f"depth {outbox.depth()}"
            proxy.cut()
            proxy.blackhole(False)
            wait_for_seqs(sub, topics, set(range(1, 81)))
            assert wait_until(lambda: outbox.depth() == 0)
    finally:
        proxy.close()


_DAEMON = """
import sys, time
from pathlib import Path
from test_mqtt_link import FAST, STREAM, result_for
from edge_runtime.publish import MqttLink, Outbox, Topics, parse_mqtt_url
db, url, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
topics = Topics("dev-kill")
outbox = Outbox(db)
link = MqttLink(parse_mqtt_url(url, **FAST), topics, outbox)
link.start()
index = 0
while count == 0 or index < count:
    outbox.append(STREAM, topics.result(STREAM), result_for(topics, index).build)
    link.wake()
    index += 1
    time.sleep(0.002)
print("appended", flush=True)
time.sleep(600)
"""


def start_daemon(db: Path, url: str, count: int) -> subprocess.Popen[bytes]:
    """A separate process running Outbox + MqttLink; ``count`` 0 appends until killed."""
    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests / "integration"), str(tests)])}
    return subprocess.Popen(
        [sys.executable, "-c", _DAEMON, str(db), url, str(count)], stdout=subprocess.PIPE, env=env
    )


def kill(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(timeout=10)


def test_daemon_killed_while_broker_down_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    topics = Topics("dev-kill")
    db = tmp_path / "outbox.db"
    mosquitto.stop()
    daemon = start_daemon(db, mosquitto.url, count=40)
    try:
        assert daemon.stdout is not None
        assert daemon.stdout.readline().strip() == b"appended"
    finally:
        kill(daemon)
    mosquitto.start()
    with Subscriber(mosquitto, topics.result(STREAM)) as sub, Outbox(db) as outbox:
        assert outbox.depth() == 40
        with running_link(mosquitto.settings(**FAST), topics, outbox) as link:
            wait_for_seqs(sub, topics, set(range(1, 41)))
            assert append(outbox, topics, link, 1) == [41]
            wait_for_seqs(sub, topics, {41})


def test_daemon_killed_mid_stream_sends_its_will_and_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    topics = Topics("dev-kill")
    db = tmp_path / "outbox.db"
    watched = [topics.result(STREAM), topics.status]
    with Subscriber(mosquitto, watched) as sub:
        daemon = start_daemon(db, mosquitto.url, count=0)
        try:
            assert sub.wait_for(60, 15, topics.result(STREAM))
        finally:
            kill(daemon)
        assert sub.wait_until(
            lambda msgs: any(m.json()["state"] == "offline" for m in msgs), 5, topics.status
        )
        assert read_retained(mosquitto, topics.status) == {
            "state": "offline", "reason": "connection lost", "device": "dev-kill",
        }
        with Outbox(db) as outbox:
            last = outbox.last_seq(STREAM)
            with running_link(mosquitto.settings(**FAST), topics, outbox) as link:
                wait_for_seqs(sub, topics, set(range(1, last + 1)))
                assert append(outbox, topics, link, 1) == [last + 1]
                wait_for_seqs(sub, topics, {last + 1})


# Status ----------------------------------------------------------------------------------------


def test_status_online_while_running_offline_after_clean_stop(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    topics = Topics("dev-status")
    with Outbox(tmp_path / "o.db") as outbox:
        link = MqttLink(mosquitto.settings(**FAST), topics, outbox,
                        status_extra=lambda: {"pipelines": ["default"]})
        link.start()
        assert wait_until(lambda: link.connected)
        online = read_retained(mosquitto, topics.status)
        assert online is not None
        assert (online["state"], online["device"], online["pipelines"]) == (
            "online", "dev-status", ["default"],
        )
        link.set_status("degraded", reason="camera lost")
        assert wait_until(
            lambda: (read_retained(mosquitto, topics.status) or {}).get("state") == "degraded"
        )
        link.stop()
        offline = read_retained(mosquitto, topics.status)
        assert offline is not None
        assert (offline["state"], offline["reason"]) == ("offline", "stopped")


def test_last_status_is_republished_after_a_reconnect(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    topics = Topics("dev-again")
    with (
        Subscriber(mosquitto, topics.status) as sub,
        Outbox(tmp_path / "o.db") as outbox,
        running_link(mosquitto.settings(**FAST), topics, outbox) as link,
    ):
        assert wait_until(lambda: link.connected)
        link.set_status("degraded", reason="camera lost")
        assert sub.wait_until(lambda m: last_state(m) == "degraded", 5)
        before = len(sub.messages())
        mosquitto.restart()
        assert wait_until(lambda: link.counters["reconnects"] >= 1)
        assert sub.wait_until(lambda m: len(m) > before and last_state(m) == "degraded", 10)
        assert sub.messages()[-1].json()["reason"] == "camera lost"


# Authentication and TLS ------------------------------------------------------------------------


def test_wrong_password_is_reported_in_plain_words_and_retried(
    make_mosquitto: Callable[..., Mosquitto], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_runtime")
    broker = make_mosquitto(users={"edge": "right-password"})
    topics = Topics("dev-auth")
    settings = broker.settings(username="edge", password="wrong-password-42", **FAST)
    with Outbox(tmp_path / "o.db") as outbox:
        link = MqttLink(settings, topics, outbox)
        link.start()
        append(outbox, topics, link, 5)
        assert wait_until(lambda: link.counters["connect_failures"] >= 3)
        assert link.last_error in ("bad username or password", "connection refused: not authorised")
        assert not link.connected
        assert link.stop() == 5
    refusals = [r for r in caplog.records if link.last_error in r.getMessage()]
    assert len(refusals) == 1
    assert "wrong-password-42" not in caplog.text


def test_tls_with_ca_and_password_file_delivers(
    make_mosquitto: Callable[..., Mosquitto], tmp_path: Path
) -> None:
    broker = make_mosquitto(users={"edge": "tls-secret"}, tls=True)
    topics = Topics("dev-tls")
    secret = tmp_path / "mqtt-password"
    secret.write_text("tls-secret\n")
    settings = broker.settings(username="edge", password_file=secret, **FAST)
    assert settings.tls and settings.ca_file is not None
    with (
        Subscriber(broker, topics.result(STREAM), username="edge", password="tls-secret") as sub,
        Outbox(tmp_path / "o.db") as outbox,
        running_link(settings, topics, outbox) as link,
    ):
        append(outbox, topics, link, 20)
        wait_for_seqs(sub, topics, set(range(1, 21)))
        assert link.last_error is None


def test_untrusted_certificate_is_reported(
    make_mosquitto: Callable[..., Mosquitto], tmp_path: Path
) -> None:
    broker = make_mosquitto(tls=True)
    settings = MqttSettings(host=broker.host, port=broker.port, tls=True, **FAST)  # no CA given
    with (
        Outbox(tmp_path / "o.db") as outbox,
        running_link(settings, Topics("dev-tls"), outbox) as link,
    ):
        assert wait_until(lambda: link.last_error is not None)
        assert "TLS certificate" in (link.last_error or "")
        assert not link.connected


# Commands and MQTT 5 ---------------------------------------------------------------------------


def test_commands_reach_the_handler_and_replies_go_out(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    topics = Topics("dev-cmd")
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def handle(verb: str, payload: bytes) -> None:
        if verb == "explode":
            raise RuntimeError("handler bug")
        received.put((verb, payload))

    with (
        Subscriber(mosquitto, topics.reply("pause")) as sub,
        Outbox(tmp_path / "o.db") as outbox,
        running_link(mosquitto.settings(**FAST), topics, outbox, on_command=handle) as link,
    ):
        assert wait_until(lambda: link.connected)
        time.sleep(0.1)  # let the command subscription settle
        publish_once(mosquitto, topics.cmd("explode"), b"{}")
        publish_once(mosquitto, topics.reply("pause"), b'{"ok": true}')
        publish_once(mosquitto, topics.cmd("pause"), b'{"pipeline": "default"}')
        assert received.get(timeout=5) == ("pause", b'{"pipeline": "default"}')
        link.publish(topics.reply("pause"), encode({"ok": True}), qos=1)
        assert sub.wait_until(lambda m: any(x.json() == {"ok": True} for x in m), 5)
        assert received.empty()


def test_mqtt5_session_keeps_commands_sent_while_stopped(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    topics = Topics("dev-v5")
    settings = mosquitto.settings(protocol="5", **FAST)
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    with Subscriber(mosquitto, topics.result(STREAM)) as sub, Outbox(tmp_path / "o.db") as outbox:
        with running_link(settings, topics, outbox) as link:
            append(outbox, topics, link, 10)
            wait_for_seqs(sub, topics, set(range(1, 11)))
        publish_once(mosquitto, topics.cmd("resume"), b"{}")
        with running_link(settings, topics, outbox,
                          on_command=lambda v, p: received.put((v, p))) as link:
            assert received.get(timeout=5) == ("resume", b"{}")
            assert link.counters["acked"] == 0


def test_unreachable_broker_never_raises(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    topics = Topics("dev-away")
    with Outbox(tmp_path / "o.db") as outbox:
        link = MqttLink(MqttSettings(port=port, **FAST), topics, outbox)
        link.start()
        assert wait_until(lambda: link.counters["connect_failures"] >= 2)
        assert link.last_error == f"broker unreachable: 127.0.0.1:{port}: connection refused"
        link.publish(topics.metrics, b"{}")
        assert link.counters["direct_dropped"] == 1
        append(outbox, topics, link, 3)
        assert link.stop() == 3


def test_embedded_broker_carries_results_and_reports_a_busy_port(tmp_path: Path) -> None:
    pytest.importorskip("amqtt")
    from edge_runtime.publish.broker import BrokerError, EmbeddedBroker

    topics = Topics("dev-demo")
    with (
        EmbeddedBroker(port=free_port()) as broker,
        Subscriber(broker, topics.result(STREAM)) as sub,
        Outbox(tmp_path / "o.db") as outbox,
        running_link(MqttSettings(port=broker.port, **FAST), topics, outbox) as link,
    ):
        append(outbox, topics, link, 20)
        assert sub.wait_for(20, 10)
        assert seqs_seen(sub, topics) == list(range(1, 21))
        with pytest.raises(BrokerError, match="address already in use"):
            EmbeddedBroker(port=broker.port).start()
