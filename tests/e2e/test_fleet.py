"""Fleet deployment end to end: ten real daemons on one Mosquitto, real signed bundles pushed by
the real ``edge-convert deploy`` (SPEC §5–§6).

A signed release reaches every device; unsigned, foreign-signed, tampered and unhealthy bundles
are refused everywhere while the old model keeps serving (and stays on disk for a restart); a
``--group`` deploy reaches exactly the devices that joined the group.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.daemon import (
    DaemonProcess,
    Mosquitto,
    Subscriber,
    copy_bundle,
    edge_convert,
    stop_fleet,
    table_rows,
    wait_for,
)

pytestmark = pytest.mark.mosquitto

FLEET_SIZE = 10
LAB = ("dev-1", "dev-4", "dev-7")  # started from a config file that joins the group "lab"
BUNDLE_DIR = "digits-rpi4"  # every release keeps the directory name, as a real update would
START_TIMEOUT_S = 60
DEPLOY_TIMEOUT_S = 60
SETTLE_TIMEOUT_S = 20
CONVERT_TIMEOUT_S = 120


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path
    foreign_private: Path


@dataclass
class Fleet:
    broker: Mosquitto
    sub: Subscriber
    daemons: dict[str, DaemonProcess]
    states: dict[str, Path]
    releases: Path
    keys: Keys

    @property
    def devices(self) -> list[str]:
        return list(self.daemons)

    def results(self, device: str) -> list[dict[str, Any]]:
        found = self.sub.payloads(f"edge/{device}/default/result")
        return sorted(found, key=lambda r: r["seq"])

    def last_seq(self, device: str) -> int:
        found = self.results(device)
        return found[-1]["seq"] if found else 0

    def serving(self, device: str) -> str:
        """The model version of the device's newest result."""
        return str(self.results(device)[-1]["model"]["version"])

    def status(self, device: str) -> dict[str, Any]:
        found = self.sub.payloads(f"edge/{device}/status")
        return found[-1] if found else {}

    def installed(self, device: str) -> str:
        """The version of the bundle kept on disk, the one a restart from there would load."""
        manifest = self.states[device] / "bundles" / BUNDLE_DIR / "manifest.json"
        return str(json.loads(manifest.read_text())["version"])

    def tails(self) -> str:
        dead = [d for d in self.daemons.values() if not d.alive]
        shown = dead or list(self.daemons.values())[:1]
        return "\n".join(d.tail(15) for d in shown)

    def deploy(self, bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return edge_convert("deploy", str(bundle), "--mqtt", self.broker.url,
                            "--timeout", str(DEPLOY_TIMEOUT_S), *args,
                            timeout=DEPLOY_TIMEOUT_S + 30)

    def deploy_to_all(self, bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
        targets = [a for d in self.devices for a in ("--device", d)]
        return self.deploy(bundle, *targets, *args)


# ----- releases ------------------------------------------------------------------------------


def release(digits_bundle: Path, root: Path, name: str, version: str,
            edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """An unsigned copy of the bundle under ``root/name/``, with ``version`` and any ``edit``."""
    bundle = copy_bundle(digits_bundle, root / name / BUNDLE_DIR, version=version)
    (bundle / "signature.json").unlink(missing_ok=True)
    if edit is not None:
        manifest = bundle / "manifest.json"
        data = json.loads(manifest.read_text())
        edit(data)
        manifest.write_text(json.dumps(data, indent=2))
    return bundle


def pack(bundle: Path, key: Path | None) -> Path:
    signing = ["--sign-key", str(key)] if key else []
    done = edge_convert("pack", str(bundle), *signing, timeout=CONVERT_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


def keygen(directory: Path) -> tuple[Path, Path]:
    done = edge_convert("keygen", str(directory), timeout=CONVERT_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return directory / "edge-signing.key", directory / "edge-signing.pub"


# ----- the fleet -----------------------------------------------------------------------------


def lab_config(path: Path, bundle: Path, source: Path) -> Path:
    path.write_text(
        "groups: [lab]\n"
        "pipelines:\n"
        f"  - bundle: {bundle}\n"
        f"    source: {source}\n"
        "    fps: 2\n    loop: true\n    threads: 1\n"
    )
    return path


def start_daemon(device: str, fleet_dir: Path, url: str, v1: Path, source: Path,
                 public: Path) -> DaemonProcess:
    common = ["--mqtt", url, "--device-id", device, "--state-dir", str(fleet_dir / device),
              "--trusted-key", str(public)]
    if device in LAB:
        config = lab_config(fleet_dir / f"{device}.yaml", v1, source)
        return DaemonProcess(["--config", str(config), *common], fleet_dir / "logs")
    flags = ["--bundle", str(v1), "--source", str(source), "--loop", "--fps", "2",
             "--threads", "1"]
    return DaemonProcess([*flags, *common], fleet_dir / "logs")


def all_online(sub: Subscriber, devices: list[str]) -> bool:
    latest = {m.topic.split("/")[1]: m.json() for m in sub.messages() if m.topic.endswith("/status")}
    return all(latest.get(d, {}).get("state") == "online" for d in devices)


@pytest.fixture(scope="module")
def fleet(broker: Mosquitto, digits: Path, digits_bundle: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    private, public = keygen(root / "keys")
    foreign_private, _ = keygen(root / "foreign-keys")
    keys = Keys(private, public, foreign_private)
    v1 = pack(release(digits_bundle, root / "releases", "v1", "1"), private)
    devices = [f"dev-{n}" for n in range(FLEET_SIZE)]
    sub = Subscriber(broker, ["edge/+/default/result", "edge/+/status"]).start()
    daemons = {d: start_daemon(d, root / "devices", broker.url, v1, digits / "images" / "val",
                               public) for d in devices}
    built = Fleet(broker, sub, daemons, {d: root / "devices" / d for d in devices},
                  root / "releases", keys)
    try:
        online = sub.wait_until(lambda _: all_online(sub, devices), START_TIMEOUT_S)
        assert online, f"not every daemon came online\n{built.tails()}"
        assert wait_for(lambda: all(built.results(d) for d in devices), SETTLE_TIMEOUT_S), \
            built.tails()
        yield built
    finally:
        stop_fleet(daemons.values(), sub, root / "devices")


# ----- checks --------------------------------------------------------------------------------


def wait_for_new_results(fleet: Fleet, marks: dict[str, int], count: int = 2) -> None:
    def arrived() -> bool:
        return all(sum(r["seq"] > seq for r in fleet.results(d)) >= count
                   for d, seq in marks.items())

    assert wait_for(arrived, SETTLE_TIMEOUT_S), f"devices stopped publishing\n{fleet.tails()}"


def wait_until_serving(fleet: Fleet, devices: list[str], version: str, count: int = 2) -> None:
    def serving() -> bool:
        return all(sum(r["model"]["version"] == version for r in fleet.results(d)) >= count
                   for d in devices)

    if not wait_for(serving, SETTLE_TIMEOUT_S):
        late = {d: fleet.serving(d) for d in devices if fleet.serving(d) != version}
        pytest.fail(f"not serving version {version}: {late}\n{fleet.tails()}")


def versions_after_first(results: list[dict[str, Any]], version: str) -> set[str]:
    """The versions of every result from the first one carrying ``version`` on."""
    seqs = [r["seq"] for r in results if r["model"]["version"] == version]
    return {r["model"]["version"] for r in results if seqs and r["seq"] >= seqs[0]}


def assert_refused_everywhere(fleet: Fleet, bundle: Path, reason: str, *args: str) -> None:
    """Deploy ``bundle`` to all; every device refuses it and keeps serving (and keeping) its own."""
    before = {d: fleet.serving(d) for d in fleet.devices}
    marks = {d: fleet.last_seq(d) for d in fleet.devices}
    done = fleet.deploy_to_all(bundle, *args)
    assert done.returncode != 0, done.stdout
    rows = table_rows(done.stdout)
    assert sorted(rows) == sorted(fleet.devices), done.stdout
    for device, row in rows.items():
        assert "FAILED" in row and reason in row, f"{device}: {row}"
    assert f"0/{FLEET_SIZE} device(s) updated" in done.stdout
    wait_for_new_results(fleet, marks)
    for device in fleet.devices:
        later = {r["model"]["version"] for r in fleet.results(device) if r["seq"] > marks[device]}
        assert later == {before[device]}, f"{device} served {later} after a refused deploy"
        assert fleet.installed(device) == before[device], f"{device}: refused bundle kept on disk"
    assert all(d.alive for d in fleet.daemons.values()), fleet.tails()


# ----- the tests -----------------------------------------------------------------------------


def test_a_signed_release_reaches_every_device(fleet: Fleet, digits_bundle: Path) -> None:
    v2 = release(digits_bundle, fleet.releases, "v2", "2")
    done = fleet.deploy_to_all(v2, "--sign-key", str(fleet.keys.private))
    assert done.returncode == 0, done.stdout + done.stderr + fleet.tails()
    rows = table_rows(done.stdout)
    assert sorted(rows) == sorted(fleet.devices), done.stdout
    for device, row in rows.items():
        assert re.search(r"\S+ → 2\s+ok\b", row), f"{device}: {row}"
    assert f"{FLEET_SIZE}/{FLEET_SIZE} device(s) updated" in done.stdout
    wait_until_serving(fleet, fleet.devices, "2")
    for device in fleet.devices:
        assert versions_after_first(fleet.results(device), "2") == {"2"}, device
        assert fleet.installed(device) == "2"
    assert wait_for(lambda: all(
        fleet.status(d)["pipelines"]["default"]["model"]["version"] == "2"
        for d in fleet.devices), SETTLE_TIMEOUT_S), "retained status still names the old model"


def test_an_unsigned_release_is_refused_by_all(fleet: Fleet, digits_bundle: Path) -> None:
    unsigned = pack(release(digits_bundle, fleet.releases, "unsigned", "9-unsigned"), None)
    assert_refused_everywhere(fleet, unsigned, "not signed")


def test_a_release_signed_by_a_foreign_key_is_refused_by_all(fleet: Fleet,
                                                             digits_bundle: Path) -> None:
    foreign = release(digits_bundle, fleet.releases, "foreign", "9-foreign")
    assert_refused_everywhere(fleet, foreign, "untrusted key", "--sign-key",
                              str(fleet.keys.foreign_private))


def test_a_release_changed_after_signing_is_refused_by_all(fleet: Fleet,
                                                           digits_bundle: Path) -> None:
    bundle = release(digits_bundle, fleet.releases, "tampered", "9")
    pack(bundle, fleet.keys.private)
    manifest = bundle / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version": "9"', '"version": "9-tampered"'))
    assert_refused_everywhere(fleet, pack(bundle, None), "modified")


def _too_slow(manifest: dict[str, Any]) -> None:
    manifest["profile"].setdefault("budgets", {})["max_latency_ms"] = 0.000001


def _other_task(manifest: dict[str, Any]) -> None:
    manifest["task"] = "regression"


@pytest.mark.parametrize(("edit", "reason"), [(_too_slow, "budget"), (_other_task, "task")],
                         ids=["over-latency-budget", "task-mismatch"])
def test_a_release_failing_its_health_check_is_refused_by_all(
        fleet: Fleet, digits_bundle: Path, edit: Callable[[dict[str, Any]], None],
        reason: str) -> None:
    name = edit.__name__.strip("_")
    unhealthy = release(digits_bundle, fleet.releases, name, f"9-{name}", edit)
    assert_refused_everywhere(fleet, unhealthy, reason, "--sign-key", str(fleet.keys.private))


def test_a_group_deploy_reaches_the_devices_that_joined(fleet: Fleet,
                                                        digits_bundle: Path) -> None:
    others = [d for d in fleet.devices if d not in LAB]
    before = {d: fleet.serving(d) for d in others}
    marks = {d: fleet.last_seq(d) for d in others}
    lab_release = release(digits_bundle, fleet.releases, "lab", "3-lab")
    done = fleet.deploy(lab_release, "--group", "lab", "--sign-key", str(fleet.keys.private))
    assert done.returncode == 0, done.stdout + done.stderr + fleet.tails()
    rows = table_rows(done.stdout)
    assert sorted(rows) == sorted(LAB), done.stdout
    assert all(" ok " in f"{row} " for row in rows.values()), done.stdout
    wait_until_serving(fleet, list(LAB), "3-lab")
    wait_for_new_results(fleet, marks)
    for device in others:
        later = {r["model"]["version"] for r in fleet.results(device) if r["seq"] > marks[device]}
        assert later == {before[device]}, f"{device} is not in the group but changed"
    assert fleet.status(LAB[0])["groups"] == ["lab"]
