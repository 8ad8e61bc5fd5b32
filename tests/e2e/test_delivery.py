"""Nothing is lost (SPEC §7): broker restarts, a killed daemon, a clean stop, and TLS with
passwords, each against the real daemon and a real Mosquitto."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import support.daemon
from support.daemon import (
    DaemonProcess,
    Mosquitto,
    Subscriber,
    TcpProxy,
    missing,
    new_device,
    outbox_depth,
    read_retained,
    result_topic,
    results,
    run_args,
    seqs,
    status_topic,
    wait_for,
    wait_for_seqs,
)

pytestmark = pytest.mark.mosquitto

PACED = ["--fps", "20", "--loop"]


def paced_daemon(broker: Mosquitto, digits: Path, bundle: Path, workdir: Path, device: str,
                 state: Path, extra: list[str] | None = None) -> DaemonProcess:
    args = run_args(bundle, digits / "images" / "val", broker_url=broker.url, device=device,
                    state_dir=state, extra=PACED if extra is None else extra)
    return DaemonProcess(args, workdir)


def assert_complete(sub: Subscriber, device: str, upto: int, daemon: DaemonProcess,
                    timeout: float = 20) -> None:
    arrived = wait_for_seqs(sub, device, upto, timeout)
    gaps = missing(seqs(results(sub, device)), upto)
    assert arrived, f"{len(gaps)} of {upto} results lost, first {gaps[:10]}\n{daemon.tail()}"


def test_a_broker_restart_mid_stream_loses_nothing(
        make_broker: Callable[..., Mosquitto], digits: Path, digits_bundle: Path,
        tmp_path: Path) -> None:
    broker = make_broker()
    device, state, total = new_device("restart"), tmp_path / "state", 120
    with Subscriber(broker, result_topic(device)) as sub, \
            paced_daemon(broker, digits, digits_bundle, tmp_path, device, state,
                         extra=["--fps", "20", "--loop", "--max-frames", str(total)]) as daemon:
        assert sub.wait_for(30, 30), daemon.tail()
        broker.stop()
        assert wait_for(lambda: outbox_depth(state) >= 10, 15), daemon.tail()
        broker.start()
        assert daemon.wait(60) == 0, daemon.tail()
        assert_complete(sub, device, total, daemon)
        assert max(seqs(results(sub, device))) == total


def test_a_network_cut_with_results_in_flight_loses_nothing(
        make_broker: Callable[..., Mosquitto], digits: Path, digits_bundle: Path,
        tmp_path: Path) -> None:
    broker = make_broker()
    proxy = TcpProxy(broker.host, broker.port).start()
    device, state = new_device("cut"), tmp_path / "state"
    args = run_args(digits_bundle, digits / "images" / "val",
                    broker_url=f"mqtt://{broker.host}:{proxy.port}", device=device,
                    state_dir=state, extra=PACED)
    try:
        with Subscriber(broker, result_topic(device)) as sub, \
                DaemonProcess(args, tmp_path) as daemon:
            assert sub.wait_for(10, 30), daemon.tail()
            # Published, never acknowledged: these are in flight when the link dies.
            proxy.blackhole(True)
            assert wait_for(lambda: outbox_depth(state) >= 10, 15), daemon.tail()
            proxy.cut()
            proxy.blackhole(False)
            numbered = support.daemon.outbox_last_seq(state)
            assert_complete(sub, device, numbered, daemon, timeout=30)
            assert daemon.terminate() == 0, daemon.tail()
            assert_complete(sub, device, support.daemon.outbox_last_seq(state), daemon)
    finally:
        proxy.close()


def test_a_killed_daemon_restarted_on_its_state_dir_delivers_and_continues(
        make_broker: Callable[..., Mosquitto], digits: Path, digits_bundle: Path,
        tmp_path: Path) -> None:
    broker = make_broker()
    device, state = new_device("kill"), tmp_path / "state"
    with Subscriber(broker, result_topic(device)) as sub:
        with paced_daemon(broker, digits, digits_bundle, tmp_path, device, state) as first:
            assert sub.wait_for(10, 30), first.tail()
            broker.stop()
            seen_before_stop = max(seqs(results(sub, device)))
            assert wait_for(lambda: outbox_depth(state) >= 10, 15), first.tail()
            first.kill()
        numbered = support.daemon.outbox_last_seq(state)
        assert numbered > seen_before_stop, "nothing was waiting in the outbox at the kill"

        broker.start()
        more = 10
        with paced_daemon(broker, digits, digits_bundle, tmp_path, device, state,
                          extra=["--fps", "20", "--max-frames", str(more)]) as second:
            assert second.wait(60) == 0, second.tail()
            assert_complete(sub, device, numbered + more, second)
        after = [r for r in results(sub, device) if r["seq"] > numbered]
        assert sorted({r["seq"] for r in after}) == list(range(numbered + 1, numbered + more + 1))
        # The second run numbered its own results from where the killed one stopped.
        assert min(r["ts"] for r in after) > max(
            r["ts"] for r in results(sub, device) if r["seq"] <= numbered)


def test_sigterm_drains_the_outbox_and_leaves_offline_retained(
        make_broker: Callable[..., Mosquitto], digits: Path, digits_bundle: Path,
        tmp_path: Path) -> None:
    broker = make_broker()
    device, state = new_device("term"), tmp_path / "state"
    with Subscriber(broker, [result_topic(device), status_topic(device)]) as sub, \
            paced_daemon(broker, digits, digits_bundle, tmp_path, device, state) as daemon:
        assert sub.wait_for(10, 30, result_topic(device)), daemon.tail()
        assert daemon.terminate() == 0, daemon.tail()
        last = support.daemon.outbox_last_seq(state)
        assert_complete(sub, device, last, daemon)
    assert outbox_depth(state) == 0
    retained = read_retained(broker, status_topic(device))
    assert retained is not None and retained["state"] == "offline", retained


# ----- TLS and passwords ---------------------------------------------------------------------

USER, PASSWORD = "edge-dev", "tls-Pa55word-7f3c"


def tls_url(broker: Mosquitto, password: str) -> str:
    return f"mqtts://{USER}:{password}@{broker.host}:{broker.port}"


def test_results_reach_a_tls_broker_with_a_password(
        make_broker: Callable[..., Mosquitto], digits: Path, digits_bundle: Path,
        tmp_path: Path) -> None:
    broker = make_broker(users={USER: PASSWORD}, tls=True)
    assert broker.tls_files is not None
    device, count = new_device("tls"), 10
    args = run_args(digits_bundle, digits / "images" / "val",
                    broker_url=tls_url(broker, PASSWORD), device=device,
                    state_dir=tmp_path / "state",
                    extra=["--mqtt-ca", str(broker.tls_files.ca_file),
                           "--max-frames", str(count)])
    with Subscriber(broker, result_topic(device), username=USER, password=PASSWORD) as sub, \
            DaemonProcess(args, tmp_path) as daemon:
        assert daemon.wait(60) == 0, daemon.tail()
        assert_complete(sub, device, count, daemon)
    assert PASSWORD not in daemon.stderr()


def test_a_wrong_password_is_refused_in_plain_words_and_never_logged(
        make_broker: Callable[..., Mosquitto], digits: Path, digits_bundle: Path,
        tmp_path: Path) -> None:
    broker = make_broker(users={USER: PASSWORD}, tls=True)
    assert broker.tls_files is not None
    wrong = "Wr0ng-secret-91ab"
    args = run_args(digits_bundle, digits / "images" / "val", broker_url=tls_url(broker, wrong),
                    device=new_device("tls-bad"), state_dir=tmp_path / "state",
                    extra=["--mqtt-ca", str(broker.tls_files.ca_file), *PACED])
    with DaemonProcess(args, tmp_path) as daemon:
        refused = wait_for(lambda: "bad username or password" in daemon.stderr()
                           or "not authorised" in daemon.stderr(), 20)
        assert refused, daemon.tail()
        # Still serving: results pile up in the outbox while the broker says no.
        depth = outbox_depth(tmp_path / "state")
        assert wait_for(lambda: outbox_depth(tmp_path / "state") > depth, 10), daemon.tail()
        assert daemon.alive, daemon.tail()
        assert daemon.terminate() == 0, daemon.tail()
    stderr = daemon.stderr()
    assert wrong not in stderr and PASSWORD not in stderr
    assert "Traceback" not in stderr
