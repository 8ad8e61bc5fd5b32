"""Hardening, as a user meets it: the real CLIs in subprocesses against a real Mosquitto.

One daemon per state dir; an outbox locked by another program is waited for, not thrown away;
credentials never reach the broker or the log; names that would break the topic tree and bad
URLs are one-line errors; ``watch`` and ``deploy`` connect with a client certificate.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.daemon import (
    DaemonProcess,
    Mosquitto,
    Subscriber,
    copy_bundle,
    new_device,
    result_topic,
    results,
    run_args,
    run_cli,
    seqs,
    status_topic,
    wait_for_seqs,
)
from support.mosquitto import publish_once

from edge_runtime.publish.outbox import Outbox
from edge_runtime.publish.payloads import FrameInfo, ModelInfo, ResultMessage, Timing

SECRET = "hunter2-x7"
CAMERA_SECRET = "camera-pw-9q"
PACED = ["--fps", "20", "--loop"]
BIN = Path(sys.executable).parent


def cli(name: str) -> str:
    return str(BIN / name) if (BIN / name).exists() else name


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def edge_convert(*args: str, env: dict[str, str] | None = None,
                 ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([cli("edge-convert"), *args], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, **(env or {})})


# ----- one daemon per state dir ----------------------------------------------------------------


@pytest.mark.mosquitto
def test_a_second_daemon_on_a_state_dir_is_refused_and_the_lock_dies_with_its_holder(
        broker: Mosquitto, digits: Path, digits_bundle: Path, tmp_path: Path) -> None:
    device, state = new_device("lock"), tmp_path / "state"
    source = digits / "images" / "val"
    with Subscriber(broker, result_topic(device)) as sub:
        first = DaemonProcess(run_args(digits_bundle, source, broker_url=broker.url,
                                       device=device, state_dir=state, extra=PACED),
                              tmp_path)
        with first:
            assert sub.wait_for(3, 30), first.tail()
            second = run_cli("-v", "run", *run_args(digits_bundle, source, broker_url=broker.url,
                                                    device=device, state_dir=state),
                             timeout=60)
            line = one_error_line(second)
            assert f"pid {first.process.pid}" in line and str(state) in line, line
            assert first.alive, first.tail()
            first.kill()  # SIGKILL: no chance to clean anything up

        # The kernel released the lock with the process: the next daemon starts at once.
        before = max(seqs(results(sub, device)))
        third = run_cli("run", *run_args(digits_bundle, source, broker_url=broker.url,
                                         device=device, state_dir=state,
                                         extra=["--max-frames", "3"]), timeout=60)
        assert third.returncode == 0, third.stderr
        assert wait_for_seqs(sub, device, before + 3, 20)
    # Every seq names one result (a resend repeats it whole), never two different ones.
    by_seq: dict[int, set[tuple[Any, ...]]] = {}
    for r in results(sub, device):
        by_seq.setdefault(r["seq"], set()).add((r["ts"], r["frame"]["ref"]))
    assert all(len(found) == 1 for found in by_seq.values()), \
        {seq: found for seq, found in by_seq.items() if len(found) > 1}


# ----- an outbox locked by another program ------------------------------------------------------


@contextlib.contextmanager
def held_exclusively(path: Path) -> Iterator[Callable[[], None]]:
    """Another program holds the outbox database; call the yielded function to let go."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")

    def release() -> None:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()

    try:
        yield release
    finally:
        with contextlib.suppress(sqlite3.ProgrammingError):
            release()


@pytest.mark.mosquitto
def test_a_locked_outbox_is_reported_waited_for_and_its_queue_delivered(
        broker: Mosquitto, digits: Path, digits_bundle: Path, tmp_path: Path) -> None:
    device, state = new_device("busy"), tmp_path / "state"
    state.mkdir()
    outbox = state / "outbox.sqlite"
    with Outbox(outbox) as box:  # results a previous run could not deliver
        for _ in range(3):
            box.append("default", result_topic(device),
                       lambda seq: json.dumps({"seq": seq, "queued": True}).encode())
    with Subscriber(broker, [result_topic(device), status_topic(device)]) as sub, \
            held_exclusively(outbox) as release:
        args = run_args(digits_bundle, digits / "images" / "val", broker_url=broker.url,
                        device=device, state_dir=state, extra=PACED)
        with DaemonProcess(args, tmp_path) as daemon:
            def outbox_reported(msgs: list[Any]) -> bool:
                return any(m.json().get("state") == "degraded"
                           and "outbox" in str(m.json().get("reason")) for m in msgs)

            assert sub.wait_until(outbox_reported, 30, status_topic(device)), daemon.tail()
            assert daemon.alive, daemon.tail()
            release()
            assert wait_for_seqs(sub, device, 5, 30), daemon.tail()
            assert daemon.terminate() == 0, daemon.tail()
    got = results(sub, device)
    assert [r["seq"] for r in got if r.get("queued")][:3] == [1, 2, 3]
    assert all(r["seq"] > 3 for r in got if not r.get("queued"))
    assert not list(state.glob("*corrupt*")), "a locked outbox was moved aside as corrupt"


# ----- credentials -----------------------------------------------------------------------------


@pytest.mark.mosquitto
def test_credentials_never_reach_the_status_or_the_log(
        make_broker: Callable[..., Mosquitto], digits_bundle: Path, tmp_path: Path) -> None:
    broker = make_broker(users={"edge": SECRET})
    device, state = new_device("creds"), tmp_path / "state"
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(SECRET + "\n")
    camera = f"rtsp://cam:{CAMERA_SECRET}@127.0.0.1:9/live"  # nobody listens: it is retried
    args = run_args(digits_bundle, camera, broker_url=f"mqtt://edge@{broker.host}:{broker.port}",
                    device=device, state_dir=state,
                    extra=["--mqtt-password-file", str(password_file)])
    with Subscriber(broker, f"edge/{device}/#", username="edge", password=SECRET) as sub:
        with DaemonProcess(args, tmp_path) as daemon:
            assert sub.wait_until(lambda msgs: any(m.json().get("state") == "degraded"
                                                   for m in msgs), 30, status_topic(device)), \
                daemon.tail()
            assert daemon.terminate() == 0, daemon.tail()
            log = daemon.stderr()
        statuses = sub.payloads(status_topic(device))
        published = b"".join(m.payload for m in sub.messages())

        # watch takes the password from the environment, never from the command line.
        watched = subprocess.run(
            [cli("edge-runtime"), "watch", "--mqtt", f"mqtt://edge@{broker.host}:{broker.port}",
             "--device-id", device, "--json", "--timeout", "1"],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "EDGE_MQTT_PASSWORD": SECRET})
    assert statuses[0]["pipelines"]["default"]["source"] == "rtsp://cam:***@127.0.0.1:9/live"
    for secret in (SECRET, CAMERA_SECRET):
        assert secret.encode() not in published
        assert secret not in log, log
    assert "cam:***@" in log, log
    assert watched.returncode == 0, watched.stderr
    assert '"state": "offline"' in watched.stdout and SECRET not in watched.stdout


def test_bad_urls_and_names_are_one_line_errors_without_secrets(tmp_path: Path) -> None:
    url = f"mqtt://edge:{SECRET}@broker.local:notaport"
    bundle = tmp_path / "b.tflite"   # there, so that the URL is what is wrong
    bundle.write_bytes(b"")
    for result in (
        run_cli("run", "--bundle", str(bundle), "--source", "s", "--mqtt", url,
                "--state-dir", str(tmp_path / "s1")),
        run_cli("watch", "--mqtt", url),
        edge_convert("deploy", str(tmp_path), "--mqtt", url, "--device", "pi-1"),
    ):
        line = one_error_line(result)
        assert "bad port" in line and SECRET not in result.stderr, result.stderr
        assert "--mqtt-password-file" in result.stderr  # the warning says what to use instead

    reserved = run_cli("run", "--bundle", str(bundle), "--source", "s", "--pipeline", "cmd",
                       "--state-dir", str(tmp_path / "s2"))
    assert "'cmd' is reserved" in one_error_line(reserved)
    refused = edge_convert("deploy", str(tmp_path), "--mqtt", "mqtt://127.0.0.1:9",
                           "--device", "+")
    assert "--device '+'" in one_error_line(refused)
    config = tmp_path / "config.yaml"
    config.write_text("mqtt:\n  prefix: a/b\npipelines:\n  - bundle: b\n    source: s\n")
    assert "mqtt.prefix" in one_error_line(run_cli("check-config", str(config)))

    for command in (["edge-runtime", "run"], ["edge-runtime", "watch"],
                    ["edge-convert", "deploy"]):
        text = subprocess.run([cli(command[0]), *command[1:], "--help"], capture_output=True,
                              text=True, timeout=60, check=True).stdout
        assert "user:pass" not in text and "--mqtt-password-file" in text, command
        assert "--mqtt-cert" in text and "--mqtt-key" in text, command


# ----- a broker that wants a client certificate -------------------------------------------------


@pytest.mark.mosquitto
def test_watch_and_deploy_connect_with_a_client_certificate(
        make_broker: Callable[..., Mosquitto], digits_bundle: Path, tmp_path: Path) -> None:
    broker = make_broker(tls=True, require_client_cert=True)
    tls = broker.tls_files
    assert tls is not None
    device = new_device("cert")
    result = ResultMessage(device=device, pipeline="default", seq=1, ts=1.0,
                           model=ModelInfo("m", "1", "0" * 64), frame=FrameInfo(0, "0", 1.0),
                           task="raw", output={"outputs": []}, timing_ms=Timing(0, 0, 0, 0))
    publish_once(broker, result_topic(device), result.to_json(), retain=True)
    certificate = ["--mqtt-ca", str(tls.ca_file), "--mqtt-cert", str(tls.client_cert_file),
                   "--mqtt-key", str(tls.client_key_file)]

    watched = run_cli("watch", "--mqtt", broker.url, *certificate, "--device-id", device,
                      "--count", "1", "--timeout", "20")
    assert watched.returncode == 0, watched.stderr
    assert f"{device}/default #1" in watched.stdout

    refused = run_cli("watch", "--mqtt", broker.url, "--mqtt-ca", str(tls.ca_file),
                      "--device-id", device, "--count", "1", "--timeout", "20")
    assert "127.0.0.1" in one_error_line(refused)

    # Nobody answers for this device: deploy connected, pushed and waited (exit 1, not 2).
    bundle = copy_bundle(digits_bundle, tmp_path / "digits")
    pushed = edge_convert("deploy", str(bundle), "--mqtt", broker.url, *certificate,
                          "--device", device, "--timeout", "1")
    assert pushed.returncode == 1, pushed.stderr
    assert "no answer" in pushed.stdout, pushed.stdout
