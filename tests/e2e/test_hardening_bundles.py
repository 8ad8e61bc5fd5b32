"""Who may change the model, and what the command topic can cost a device, against the real CLIs
and a real Mosquitto: unsigned deploys refused by default, signed releases bound to a sequence
and to device groups, bundles read only from inside themselves and from the allowed roots,
deploy transfers bounded in bytes, chunks and time, bounded manifests and signatures, and a bad
pack never replacing the bundle installed under its name."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.daemon import (
    Commander,
    DaemonProcess,
    Mosquitto,
    Subscriber,
    copy_bundle,
    edge_convert,
    new_device,
    read_retained,
    result_topic,
    run_cli,
    wait_for,
)

from edge_runtime.bundles.packing import pack_bundle
from edge_runtime.control.transfer import STALE_S

pytestmark = pytest.mark.mosquitto

NAME = "digits-rpi4"
IDLE_TIMEOUT_S = 3
CONVERT_TIMEOUT_S = 120


def release(digits_bundle: Path, root: Path, version: str) -> Path:
    """An unsigned copy of the bundle at ``root/NAME`` with ``version``."""
    bundle = copy_bundle(digits_bundle, root / NAME, version=version)
    (bundle / "signature.json").unlink(missing_ok=True)
    return bundle


def pack(bundle: Path, *args: str) -> Path:
    done = edge_convert("pack", str(bundle), *args, timeout=CONVERT_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def deep_json(levels: int) -> str:
    return "[" * levels + "]" * levels


@dataclass
class Device:
    name: str
    daemon: DaemonProcess
    sub: Subscriber
    cmd: Commander
    state: Path
    broker: Mosquitto

    def request(self, verb: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.cmd.request(verb, body, timeout=30)

    def refused(self, verb: str, body: dict[str, Any]) -> str:
        reply = self.request(verb, body)
        assert reply["ok"] is False, f"{verb} {body} was accepted: {reply}"
        assert not str(reply["error"]).startswith("internal error"), reply
        return str(reply["error"])

    def deploy(self, bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return edge_convert("deploy", str(bundle), "--mqtt", self.broker.url, "--device",
                            self.name, "--timeout", "30", *args, timeout=90)

    def serving(self) -> str:
        found = self.sub.payloads(result_topic(self.name))
        return str(found[-1]["model"]["version"]) if found else ""

    def serves(self, version: str) -> bool:
        mark = len(self.sub.messages(result_topic(self.name)))
        return wait_for(lambda: [r["model"]["version"] for r in
                                 self.sub.payloads(result_topic(self.name))[mark:]][-2:]
                        == [version, version], 20)


CONFIG = """\
device_id: {device}
state_dir: {state}
mqtt: {{url: "{url}"}}
{extra}
commands:
  rate_per_s: 500
  burst: 500
  bundle_roots: [{roots}]
  deploy_idle_timeout_s: {idle}
pipelines:
  - bundle: {bundle}
    source: {source}
    fps: 10
    loop: true
    threads: 1
"""


def start_device(root: Path, broker: Mosquitto, bundle: Path, source: Path, extra: str = "",
                 device: str | None = None) -> Device:
    name = device or new_device("hard")
    state = root / "state"
    config = root / "config.yaml"
    config.write_text(CONFIG.format(device=name, state=state, url=broker.url, extra=extra,
                                    roots=root / "roots", idle=IDLE_TIMEOUT_S, bundle=bundle,
                                    source=source))
    sub = Subscriber(broker, f"edge/{name}/#").start()
    daemon = DaemonProcess(["--config", str(config)], root / "logs")
    device_ = Device(name, daemon, sub, Commander(sub, name), state, broker)
    assert sub.wait_for(2, 30, result_topic(name)), daemon.tail()
    return device_


def stop_device(device: Device) -> None:
    device.daemon.terminate()
    device.sub.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("keys")
    done = edge_convert("keygen", str(directory), timeout=CONVERT_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return directory / "edge-signing.key", directory / "edge-signing.pub"


# ----- unsigned: refused by default, local reload still works --------------------------------


@pytest.fixture(scope="module")
def unsigned(broker: Mosquitto, digits: Path, digits_bundle: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    """No trusted key; serves the bundle installed in STATE/bundles; reload roots: root/roots."""
    root = tmp_path_factory.mktemp("unsigned")
    (root / "roots").mkdir()
    installed = copy_bundle(digits_bundle, root / "state" / "bundles" / NAME, version="1")
    device = start_device(root, broker, installed, digits / "images" / "val")
    yield device
    stop_device(device)


def test_an_unsigned_deploy_is_refused_without_a_trusted_key(unsigned: Device,
                                                             digits_bundle: Path,
                                                             tmp_path: Path) -> None:
    done = unsigned.deploy(release(digits_bundle, tmp_path, "2-unsigned"))
    assert done.returncode != 0, done.stdout
    assert "trusts no signing key" in done.stdout and "allow_unsigned_deploy" in done.stdout
    assert unsigned.serves("1"), unsigned.daemon.tail()


def test_reload_from_an_allowed_root_still_works_without_a_key(unsigned: Device,
                                                               digits_bundle: Path) -> None:
    local = release(digits_bundle, unsigned.state.parent / "roots" / "v3", "3")
    reply = unsigned.request("reload", {"bundle": str(local)})
    assert reply["ok"] is True, reply
    assert unsigned.serves("3")
    assert unsigned.request("rollback", {})["ok"] is True
    assert unsigned.serves("1")


@pytest.mark.parametrize("linked", ["labels.txt", "model.tflite"])
def test_a_bundle_file_linking_outside_the_bundle_is_refused(unsigned: Device, digits_bundle: Path,
                                                             tmp_path: Path, linked: str) -> None:
    secret = tmp_path / "outside" / linked
    secret.parent.mkdir()
    shutil.copy(digits_bundle / linked, secret)
    bundle = release(digits_bundle, unsigned.state.parent / "roots" / f"link-{linked}", "4")
    (bundle / linked).unlink()
    (bundle / linked).symlink_to(secret)
    error = unsigned.refused("reload", {"bundle": str(bundle)})
    assert linked in error and "outside the bundle" in error, error
    assert unsigned.serves("1")


@pytest.mark.parametrize(("content", "words"), [
    (deep_json(200_000), "nested more than"),
    ('{"schema": "edge-bundle/1", "pad": "' + "x" * (5 * 2**20) + '"}', "byte limit"),
])
def test_a_huge_or_deep_manifest_is_refused_by_reload(unsigned: Device, digits_bundle: Path,
                                                      content: str, words: str) -> None:
    bundle = release(digits_bundle, unsigned.state.parent / "roots" / f"m{len(content)}", "6")
    (bundle / "manifest.json").write_text(content)
    error = unsigned.refused("reload", {"bundle": str(bundle)})
    assert words in error and "manifest" in error, error
    assert unsigned.serves("1")
    assert unsigned.daemon.alive


def test_a_refused_reload_pack_leaves_the_installed_bundle_intact(unsigned: Device,
                                                                  digits_bundle: Path) -> None:
    installed = unsigned.state / "bundles" / NAME
    before = {p.name: sha256(p) for p in installed.iterdir()}
    bad = release(digits_bundle, unsigned.state.parent / "roots" / "bad", "7-bad")
    model = bytearray((bad / "model.tflite").read_bytes())
    model[len(model) // 2] ^= 0xFF
    (bad / "model.tflite").write_bytes(bytes(model))
    archive = pack_bundle(bad)  # as anyone could make it: the CLI would refuse to pack it
    assert "sha256" in unsigned.refused("reload", {"bundle": str(archive)})
    assert {p.name: sha256(p) for p in installed.iterdir()} == before
    assert unsigned.serves("1")


# ----- allow_unsigned_deploy -----------------------------------------------------------------


def test_allow_unsigned_deploy_accepts_and_warns(broker: Mosquitto, digits: Path,
                                                 digits_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "roots").mkdir()
    v1 = release(digits_bundle, tmp_path / "v1", "1")
    device = start_device(tmp_path, broker, v1, digits / "images" / "val",
                          extra="allow_unsigned_deploy: true")
    try:
        assert "allow_unsigned_deploy" in device.daemon.stderr()
        status = read_retained(broker, f"edge/{device.name}/status")
        assert status and any("unsigned" in w for w in status.get("warnings", [])), status
        done = device.deploy(release(digits_bundle, tmp_path / "v2", "2"))
        assert done.returncode == 0, done.stdout + done.stderr + device.daemon.tail()
        assert device.serves("2")
    finally:
        stop_device(device)


# ----- signed releases: sequence and groups --------------------------------------------------


@pytest.fixture(scope="module")
def signed(broker: Mosquitto, digits: Path, digits_bundle: Path, keys: tuple[Path, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    """Trusts ``keys``, in group kitchen, serving release 1 (sequence 100)."""
    root = tmp_path_factory.mktemp("signed")
    (root / "roots").mkdir()
    v1 = pack(release(digits_bundle, root / "v1", "1"), "--sign-key", str(keys[0]),
              "--sequence", "100")
    extra = f"trusted_keys: [{keys[1]}]\ngroups: [kitchen]"
    device = start_device(root, broker, v1, digits / "images" / "val", extra=extra)
    device.daemon.args.append(str(v1))  # remembered for the restart below
    yield device
    stop_device(device)


def test_a_captured_older_release_does_not_replay(signed: Device, digits_bundle: Path,
                                                  keys: tuple[Path, Path], tmp_path: Path) -> None:
    captured = pack(release(digits_bundle, tmp_path / "v1-again", "1-again"), "--sign-key",
                    str(keys[0]), "--sequence", "150")
    v2 = release(digits_bundle, tmp_path / "v2", "2")
    done = signed.deploy(v2, "--sign-key", str(keys[0]), "--sequence", "200")
    assert done.returncode == 0, done.stdout + done.stderr + signed.daemon.tail()
    assert signed.serves("2")

    done = signed.deploy(captured)
    assert done.returncode != 0, done.stdout
    assert "older release" in done.stdout and "rollback" in done.stdout, done.stdout
    assert signed.serves("2")
    assert json.loads((signed.state / "releases.json").read_text()) == {"default": 200}

    assert signed.request("rollback", {})["ok"] is True  # the local way back still works
    assert signed.serves("1")


def test_a_release_signed_for_another_group_is_refused(signed: Device, digits_bundle: Path,
                                                       keys: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    before = signed.serving()
    lab = pack(release(digits_bundle, tmp_path / "lab", "9-lab"), "--sign-key", str(keys[0]),
               "--group", "lab")
    done = signed.deploy(lab)
    assert done.returncode != 0, done.stdout
    assert "signed for group(s) lab" in done.stdout and "kitchen" in done.stdout, done.stdout
    assert signed.serves(before)


def test_the_folder_of_the_running_bundle_is_no_reload_root(signed: Device, digits_bundle: Path,
                                                            keys: tuple[Path, Path]) -> None:
    # The daemon runs root/v1/digits-rpi4.tar.gz; root/v1 is not a configured root.
    beside = copy_bundle(digits_bundle, signed.state.parent / "v1" / "beside", version="5")
    pack(beside, "--sign-key", str(keys[0]))
    error = signed.refused("reload", {"bundle": str(beside)})
    assert "outside the places" in error, error


def test_a_deep_signature_is_a_one_line_refusal(signed: Device, digits_bundle: Path) -> None:
    bundle = release(digits_bundle, signed.state.parent / "roots" / "deep-signature", "8")
    (bundle / "signature.json").write_text(deep_json(200_000))
    error = signed.refused("reload", {"bundle": str(bundle)})
    assert "signature.json" in error and "nested" in error, error


# ----- deploy transfers from anyone on the broker --------------------------------------------


def chunk(transfer: str, chunk_no: int, chunks: int, data: bytes, size: int,
          request_id: str | None = None) -> bytes:
    return json.dumps({"id": request_id or f"{transfer}-{chunk_no}", "transfer": transfer,
                       "sha256": "0" * 64, "size": size, "chunk": chunk_no, "chunks": chunks,
                       "data": base64.b64encode(data).decode()}).encode()


def test_a_chunk_sent_again_bigger_is_refused(signed: Device) -> None:
    signed.cmd.send("deploy", chunk("grow", 0, 4, b"a" * 1024, 4096))
    signed.cmd.send("deploy", chunk("grow", 0, 4, b"b" * 3000, 4096, "grow-again"))
    reply = signed.cmd.reply_for("grow-again", 15)
    assert reply and reply["ok"] is False and "different data" in reply["error"], reply


def test_chunks_changing_mid_transfer_is_a_clear_error(signed: Device) -> None:
    signed.cmd.send("deploy", chunk("shift", 0, 3, b"a" * 1024, 3072))
    signed.cmd.send("deploy", chunk("shift", 1, 2, b"b" * 1024, 3072, "shift-changed"))
    reply = signed.cmd.reply_for("shift-changed", 15)
    assert reply and reply["ok"] is False, reply
    assert "'chunks' changed from 3 to 2" in reply["error"], reply


def test_more_chunks_than_the_size_allows_are_refused(signed: Device) -> None:
    signed.cmd.send("deploy", chunk("many", 0, 100_000, b"a", 2048, "many-1"))
    reply = signed.cmd.reply_for("many-1", 15)
    assert reply and reply["ok"] is False and "does not fit" in reply["error"], reply


def test_a_transfer_missing_a_chunk_gets_a_reply_when_it_goes_quiet(signed: Device) -> None:
    signed.cmd.send("deploy", chunk("gap", 0, 2, b"a" * 1024, 2048, "gap-1"))
    reply = signed.cmd.reply_for("gap-1", IDLE_TIMEOUT_S + 15)
    assert reply and reply["ok"] is False, reply
    assert "timed out" in reply["error"] and "1 of 2 chunk(s) never arrived" in reply["error"]


def test_junk_transfers_do_not_lock_out_a_signed_deploy(signed: Device, digits_bundle: Path,
                                                        keys: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    for junk in ("junk-a", "junk-b"):
        signed.cmd.send("deploy", chunk(junk, 0, 3, b"j" * 1024, 3072, junk))
    time.sleep(STALE_S + 0.2)  # the junk goes stale: a protocol timer, not a wait for a result
    v3 = release(digits_bundle, tmp_path / "v3", "3")
    done = signed.deploy(v3, "--sign-key", str(keys[0]))
    assert done.returncode == 0, done.stdout + done.stderr + signed.daemon.tail()
    assert signed.serves("3")
    for junk in ("junk-a", "junk-b"):
        reply = signed.cmd.reply_for(junk, IDLE_TIMEOUT_S + 15)
        assert reply and reply["ok"] is False and "without a chunk" in reply["error"], reply


def test_the_newest_release_is_remembered_across_a_restart(signed: Device, broker: Mosquitto,
                                                           digits: Path, digits_bundle: Path,
                                                           keys: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    assert signed.daemon.terminate() == 0, signed.daemon.tail()
    root = signed.state.parent
    v1 = Path(signed.daemon.args[-1])
    restarted = start_device(root, broker, v1, digits / "images" / "val",
                             extra=f"trusted_keys: [{keys[1]}]\ngroups: [kitchen]",
                             device=signed.name)
    signed.daemon, signed.sub, signed.cmd = restarted.daemon, restarted.sub, restarted.cmd
    old = pack(release(digits_bundle, tmp_path / "old", "1-old"), "--sign-key", str(keys[0]),
               "--sequence", "150")
    done = signed.deploy(old)
    assert done.returncode != 0 and "older release" in done.stdout, done.stdout


# ----- at start ------------------------------------------------------------------------------


def test_a_deep_manifest_at_start_is_one_line_and_exit_2(digits_bundle: Path,
                                                         tmp_path: Path) -> None:
    bundle = release(digits_bundle, tmp_path, "1")
    (bundle / "manifest.json").write_text(deep_json(200_000))
    done = run_cli("run", "--bundle", str(bundle), "--source", str(tmp_path),
                   "--state-dir", str(tmp_path / "state"), "--mqtt", "mqtt://127.0.0.1:1")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nested more than" in lines[0], done.stderr


def test_a_bad_pack_at_start_leaves_the_installed_bundle_intact(digits_bundle: Path,
                                                                tmp_path: Path) -> None:
    state = tmp_path / "state"
    installed = copy_bundle(digits_bundle, state / "bundles" / NAME)
    before = {p.name: sha256(p) for p in installed.iterdir()}
    bad = release(digits_bundle, tmp_path / "bad", "2-bad")
    (bad / "labels.txt").write_text("only\ntwo\n")
    done = run_cli("run", "--bundle", str(pack_bundle(bad)), "--source", str(tmp_path),
                   "--state-dir", str(state), "--mqtt", "mqtt://127.0.0.1:1")
    assert done.returncode == 2 and "labels" in done.stderr, done.stderr
    assert {p.name: sha256(p) for p in installed.iterdir()} == before
    assert not any((state / "incoming").iterdir())
    assert os.path.isdir(installed)
