"""Canary rollout end to end (SPEC §9): ten real daemons on one Mosquitto and the real
``edge-convert deploy --canary 2``. A poorly calibrated candidate is refused in shadow by both
canaries and the rollout stops there, the other eight never touched; a good one is promoted by
the canaries, reported healthy, then reaches every device.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
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
CANARIES = 2
TIMEOUT_S = 60
CONVERT_TIMEOUT_S = 180


@dataclass
class Fleet:
    broker: Mosquitto
    sub: Subscriber
    daemons: dict[str, DaemonProcess]
    key: Path
    releases: Path

    @property
    def devices(self) -> list[str]:
        return list(self.daemons)

    def results(self, device: str) -> list[dict[str, Any]]:
        return sorted(self.sub.payloads(f"edge/{device}/default/result"), key=lambda r: r["seq"])

    def last_seq(self, device: str) -> int:
        found = self.results(device)
        return found[-1]["seq"] if found else 0

    def versions_after(self, device: str, seq: int) -> set[str]:
        return {r["model"]["version"] for r in self.results(device) if r["seq"] > seq}

    def tails(self) -> str:
        return "\n".join(d.tail(12) for d in list(self.daemons.values())[:CANARIES])

    def canary_deploy(self, bundle: Path) -> tuple[subprocess.CompletedProcess[str], float]:
        targets = [a for d in self.devices for a in ("--device", d)]
        started = time.monotonic()
        done = edge_convert("deploy", str(bundle), "--mqtt", self.broker.url, *targets,
                            "--sign-key", str(self.key), "--canary", str(CANARIES),
                            "--promote-frames", "20", "--promote-agreement", "0.9",
                            "--timeout", str(TIMEOUT_S), timeout=CONVERT_TIMEOUT_S)
        return done, time.monotonic() - started


@pytest.fixture(scope="module")
def fleet(broker: Mosquitto, digits: Path, digits_bundle: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("canary")
    assert edge_convert("keygen", str(root / "keys"), timeout=CONVERT_TIMEOUT_S).returncode == 0
    v1 = copy_bundle(digits_bundle, root / "v1" / "digits-rpi4", version="1")
    packed = edge_convert("pack", str(v1), "--sign-key", str(root / "keys" / "edge-signing.key"),
                          timeout=CONVERT_TIMEOUT_S)
    assert packed.returncode == 0, packed.stderr
    pack = Path(packed.stdout.strip().splitlines()[-1])
    clean = root / "clean"   # the validation images in a mixed order, as a camera sees classes
    clean.mkdir()
    paths = sorted((digits / "images" / "val").glob("*/*.png"))
    random.Random(2).shuffle(paths)
    for i, path in enumerate(paths):
        shutil.copy(path, clean / f"{i:04d}.png")
    devices = [f"dev-{n}" for n in range(FLEET_SIZE)]
    sub = Subscriber(broker, ["edge/+/default/result", "edge/+/status"]).start()
    daemons = {d: DaemonProcess(
        ["--bundle", str(pack), "--source", str(clean), "--loop", "--fps",
         "20", "--threads", "1", "--monitor-window", "20", "--mqtt", broker.url, "--device-id",
         d, "--state-dir", str(root / "devices" / d), "--trusted-key",
         str(root / "keys" / "edge-signing.pub")], root / "logs") for d in devices}
    built = Fleet(broker, sub, daemons, root / "keys" / "edge-signing.key", root / "releases")
    try:
        assert wait_for(lambda: all(built.results(d) for d in devices), TIMEOUT_S), \
            built.tails()
        yield built
    finally:
        stop_fleet(daemons.values(), sub, root / "devices")


def test_a_bad_candidate_stops_the_rollout_after_the_canaries(
        fleet: Fleet, poorly_calibrated_bundle: Path) -> None:
    bad = copy_bundle(poorly_calibrated_bundle, fleet.releases / "poor" / "digits-rpi4")
    marks = {d: fleet.last_seq(d) for d in fleet.devices}
    done, seconds = fleet.canary_deploy(bad)
    print(f"bad candidate: rollout stopped after {seconds:.1f} s\n{done.stdout}")
    assert done.returncode == 1, done.stdout + done.stderr + fleet.tails()
    rows = table_rows(done.stdout)
    assert sorted(rows) == sorted(fleet.devices), done.stdout
    for device in fleet.devices[:CANARIES]:
        assert "(canary)" in rows[device], rows[device]
        assert re.search(r"FAILED: shadow: refused: auto: agreement \d+\.\d% over 20 frames is "
                         r"below 90\.0%", rows[device]), rows[device]
    for device in fleet.devices[CANARIES:]:
        assert "FAILED: not deployed: canary dev-0 failed" in rows[device], rows[device]
    assert f"0/{FLEET_SIZE} device(s) updated" in done.stdout
    assert wait_for(lambda: all(fleet.last_seq(d) > marks[d] + 3 for d in fleet.devices),
                    TIMEOUT_S)
    for device in fleet.devices:
        assert fleet.versions_after(device, marks[device]) == {"1"}, device


def test_a_good_candidate_goes_to_the_canaries_then_to_everyone(
        fleet: Fleet, digits_bundle: Path) -> None:
    good = copy_bundle(digits_bundle, fleet.releases / "good" / "digits-rpi4", version="2")
    done, seconds = fleet.canary_deploy(good)
    print(f"good candidate: whole rollout {seconds:.1f} s\n{done.stdout}")
    assert done.returncode == 0, done.stdout + done.stderr + fleet.tails()
    rows = table_rows(done.stdout)
    assert sorted(rows) == sorted(fleet.devices), done.stdout
    for device, row in rows.items():
        assert re.search(r"1 → 2\s+ok\b", row), f"{device}: {row}"
    assert f"{FLEET_SIZE}/{FLEET_SIZE} device(s) updated" in done.stdout

    def serving_v2() -> bool:
        return all(sum(r["model"]["version"] == "2" for r in fleet.results(d)) >= 2
                   for d in fleet.devices)

    assert wait_for(serving_v2, TIMEOUT_S), fleet.tails()
