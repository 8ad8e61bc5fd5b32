"""Watching what is served (SPEC §9), end to end: the real ``edge-runtime`` on the real digits
bundle and its validation images, a real Mosquitto.

Health windows on clean, darkened and one-class data; the golden self-test refusing a bundle
whose manifest preprocessing was edited, at start and on reload; a candidate in shadow refused by
its agreement or promoted; a roll-back on an alarm right after a swap; and a daemon that starts
with no model and takes its first one from a signed ``deploy``.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from support.daemon import (
    Commander,
    DaemonProcess,
    Mosquitto,
    Subscriber,
    copy_bundle,
    edge_convert,
    new_device,
    run_cli,
    wait_for,
)

pytestmark = pytest.mark.mosquitto

WINDOW = 100
TIMEOUT_S = 30
GOLDEN_REFUSAL = (r"v9-edited refused: golden self-test failed: sample \d+, output 0 \(\S+\) is "
                  r"\d+ quantization steps from the recorded one")
CONVERT_TIMEOUT_S = 120
CONFIG = """\
device_id: {device}
state_dir: {state}
mqtt:
  url: {url}
commands:
  rate_per_s: 500
  burst: 500
  bundle_roots: [{roots}]
monitor:
  window: {window}
{extra}pipelines:
  - name: default
{bundle}    source: {source}
{source_flags}"""


@dataclass(frozen=True)
class Sets:
    clean: Path        # every validation image once, shuffled; the file name holds the label
    dark: Path         # the same images at 40% brightness
    one_class: Path    # only the validation images of digit_3


@pytest.fixture(scope="module")
def sets(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Sets:
    root = tmp_path_factory.mktemp("watch-sets")
    paths = sorted((digits / "images" / "val").glob("*/*.png"))
    random.Random(1).shuffle(paths)
    clean, dark, one = root / "clean", root / "dark", root / "one"
    for folder in (clean, dark, one):
        folder.mkdir()
    for i, path in enumerate(paths):
        name = f"{i:04d}-{path.parent.name}.png"
        shutil.copy(path, clean / name)
        image = cv2.imread(str(path))
        cv2.imwrite(str(dark / name), (image * 0.4).astype(np.uint8))
        if path.parent.name == "digit_3":
            shutil.copy(path, one / name)
    return Sets(clean, dark, one)


@dataclass
class Device:
    name: str
    daemon: DaemonProcess
    sub: Subscriber
    cmd: Commander
    state: Path

    def topic(self, kind: str) -> str:
        return f"edge/{self.name}/default/{kind}" if kind in ("result", "health", "shadow") \
            else f"edge/{self.name}/{kind}"

    def payloads(self, kind: str) -> list[dict[str, Any]]:
        return self.sub.payloads(self.topic(kind))

    def versions_after(self, seq: int) -> set[str]:
        return {r["model"]["version"] for r in self.payloads("result") if r["seq"] > seq}

    def last_seq(self) -> int:
        return max((r["seq"] for r in self.payloads("result")), default=0)

    def wait(self, kind: str, check: Any, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def arrived(messages: list[Any]) -> bool:
            found[:] = [m.json() for m in messages if check(m.json())]
            return bool(found)

        assert self.sub.wait_until(arrived, timeout, self.topic(kind)), \
            f"no such {kind} message: {self.payloads(kind)[-3:]}\n{self.daemon.tail()}"
        return found[0]


@pytest.fixture
def start(broker: Mosquitto, tmp_path: Path) -> Iterator[Any]:
    started: list[Device] = []

    def make(source: Path, bundle: Path | None, *, window: int = WINDOW, loop: bool = False,
             fps: float | None = None, extra: str = "", args: tuple[str, ...] = ()) -> Device:
        name = new_device("watch")
        state = tmp_path / name
        flags = ("    loop: true\n" if loop else "") + (f"    fps: {fps}\n" if fps else "")
        config = tmp_path / f"{name}.yaml"
        config.write_text(CONFIG.format(
            device=name, state=state, url=broker.url, roots=tmp_path, window=window, extra=extra,
            bundle=f"    bundle: {bundle}\n" if bundle else "", source=source,
            source_flags=flags))
        sub = Subscriber(broker, [f"edge/{name}/#"]).start()
        daemon = DaemonProcess(["--config", str(config), *args], tmp_path / "logs")
        device = Device(name, daemon, sub, Commander(sub, name), state)
        started.append(device)
        return device

    yield make
    for device in started:
        device.daemon.kill()
        device.sub.stop()


def truth_of(result: dict[str, Any]) -> str:
    return result["frame"]["ref"].split("-", 1)[1].removesuffix(".png")


# ----- the monitor ---------------------------------------------------------------------------


def test_clean_validation_images_stay_healthy_and_the_accuracy_estimate_holds(
        start: Any, broker: Mosquitto, digits_bundle: Path, sets: Sets) -> None:
    device = start(sets.clean, digits_bundle)
    assert device.daemon.wait(60) == 0, device.daemon.tail()
    results = device.payloads("result")
    windows = [h for h in device.payloads("health") if "rollback" not in h]
    assert len({h["window"]["index"] for h in windows}) == len(results) // WINDOW >= 5
    assert [h["verdict"] for h in windows if h["verdict"] == "alarm"] == [], windows
    assert not [s for s in device.payloads("status") if s["state"] == "degraded"]
    judged = results[:WINDOW * (len(results) // WINDOW)]
    true_accuracy = np.mean([r["predictions"][0]["label"] == truth_of(r) for r in judged])
    estimated = np.mean([h["estimated_accuracy"] for h in windows])
    print(f"estimated accuracy {estimated:.4f}, true {true_accuracy:.4f} over {len(judged)}")
    assert abs(estimated - true_accuracy) <= 0.05
    health = windows[-1]
    assert health["schema"] == "edge-health/1" and health["model"]["version"] == "1"
    assert set(health["psi"]) == {"class_mix", "top1_score", "margin", "brightness"}
    metrics = device.payloads("metrics")[-1]["pipelines"]["default"]
    assert metrics["health"]["verdict"] == health["verdict"]
    shown = run_cli("watch", "--mqtt", broker.url, "--device-id", device.name,
                    "--timeout", "1.5")
    assert f"{device.name}/default health {health['verdict'].upper()}" in shown.stdout


@pytest.mark.parametrize(("kind", "reason"), [("dark", "brightness shifted"),
                                              ("one_class", "class mix shifted")])
def test_darkened_or_one_class_images_raise_an_alarm_within_two_windows(
        start: Any, digits_bundle: Path, sets: Sets, kind: str, reason: str) -> None:
    device = start(getattr(sets, kind), digits_bundle, window=50, loop=True, fps=200)
    alarm = device.wait("health", lambda h: h["verdict"] == "alarm")
    assert alarm["window"]["index"] <= 2, alarm
    assert any(reason in r for r in alarm["reasons"]), alarm["reasons"]
    status = device.wait("status", lambda s: s["state"] == "degraded")
    assert "health alarm" in status["reason"] and reason in status["reason"]
    assert status["pipelines"]["default"]["health"]["verdict"] == "alarm"
    assert device.daemon.terminate() == 0


# ----- the golden self-test ------------------------------------------------------------------


def edit_preprocessing(bundle: Path) -> Path:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["input"]["std"] = 127.5   # the model was quantized for pixel / 255
    manifest["version"] = "9-edited"
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return bundle


def test_edited_preprocessing_is_refused_at_start_and_on_reload(
        start: Any, digits_bundle: Path, sets: Sets, tmp_path: Path) -> None:
    edited = edit_preprocessing(copy_bundle(digits_bundle, tmp_path / "edited"))
    refused = start(sets.clean, edited)
    assert refused.daemon.wait(30) == 2
    error = refused.daemon.stderr()
    assert re.search(GOLDEN_REFUSAL, error), error
    device = start(sets.clean, digits_bundle, loop=True, fps=50)
    device.wait("result", lambda r: True)
    reply = device.cmd.request("reload", {"bundle": str(edited)})
    assert reply["ok"] is False
    assert re.search(GOLDEN_REFUSAL, reply["error"]), reply
    mark = device.last_seq()
    device.wait("result", lambda r: r["seq"] > mark + 5)
    assert device.versions_after(mark) == {"1"}


# ----- shadow, promote, roll back -------------------------------------------------------------


def shadow(bundle: Path, frames: int = 40, agreement: float = 0.9) -> dict[str, Any]:
    return {"bundle": str(bundle), "mode": "shadow", "promote": "auto", "every": 1,
            "criteria": {"frames": frames, "agreement": agreement}}


def test_a_poorly_calibrated_candidate_is_refused_in_shadow_with_its_agreement(
        start: Any, digits_bundle: Path, poorly_calibrated_bundle: Path, sets: Sets,
        tmp_path: Path) -> None:
    candidate = copy_bundle(poorly_calibrated_bundle, tmp_path / "poor")
    device = start(sets.clean, digits_bundle, loop=True, fps=100)
    device.wait("result", lambda r: True)
    reply = device.cmd.request("reload", shadow(candidate))
    assert reply["ok"] and reply["mode"] == "shadow", reply
    assert reply["candidate"]["version"] == "2-poor" and reply["model"]["version"] == "1"
    refused = device.wait("shadow", lambda s: s["state"] == "refused")
    print(f"poorly calibrated candidate: agreement {refused['agreement']} over "
          f"{refused['compared']} frames")
    assert refused["agreement"] < 0.5 and refused["compared"] == 40
    assert f"agreement {refused['agreement']:.1%}" in refused["reason"]
    assert "below 90.0%" in refused["reason"]
    mark = device.last_seq()
    device.wait("result", lambda r: r["seq"] > mark + 5)
    assert device.versions_after(mark) == {"1"}
    status = device.wait("status", lambda s: "shadow" not in s["pipelines"]["default"])
    assert status["pipelines"]["default"]["model"]["version"] == "1"


def test_a_good_candidate_is_promoted_and_a_swap_that_alarms_rolls_back(
        start: Any, digits_bundle: Path, sets: Sets, tmp_path: Path) -> None:
    good = copy_bundle(digits_bundle, tmp_path / "good", version="2")
    device = start(sets.clean, digits_bundle, loop=True, fps=200, window=50)
    device.wait("result", lambda r: True)
    assert device.cmd.request("reload", shadow(good))["ok"]
    promoted = device.wait("shadow", lambda s: s["state"] == "promoted")
    print(f"good candidate: agreement {promoted['agreement']} over {promoted['compared']}")
    assert promoted["agreement"] >= 0.9 and promoted["reason"].startswith("auto: agreement")
    device.wait("result", lambda r: r["model"]["version"] == "2")
    mark = device.wait("result", lambda r: r["model"]["version"] == "2")["seq"]
    device.wait("result", lambda r: r["seq"] > mark + 5)
    assert device.versions_after(mark) == {"2"}
    # A release whose reference says it only ever sees digit_0: its first window is an alarm.
    skewed = copy_bundle(digits_bundle, tmp_path / "skewed", version="3-skewed")
    manifest = json.loads((skewed / "manifest.json").read_text())
    shares = manifest["reference_stats"]["predicted_class_share"]
    manifest["reference_stats"]["predicted_class_share"] = {k: float(k == "digit_0")
                                                            for k in shares}
    (skewed / "manifest.json").write_text(json.dumps(manifest))
    assert device.cmd.request("reload", {"bundle": str(skewed)})["ok"]
    rolled = device.wait("health", lambda h: "rollback" in h)
    assert rolled["rollback"]["from"]["version"] == "3-skewed"
    assert rolled["rollback"]["to"]["version"] == "2"
    assert "class mix shifted" in rolled["rollback"]["reason"]
    mark = device.last_seq()
    device.wait("result", lambda r: r["seq"] > mark + 5)
    assert device.versions_after(mark + 1) == {"2"}


# ----- zero-touch first model ----------------------------------------------------------------


def test_a_daemon_without_a_model_waits_then_serves_after_one_signed_deploy(
        start: Any, broker: Mosquitto, digits_bundle: Path, sets: Sets,
        tmp_path: Path) -> None:
    assert edge_convert("keygen", str(tmp_path / "keys"), timeout=CONVERT_TIMEOUT_S).returncode == 0
    trusted = f"trusted_keys: [{tmp_path / 'keys' / 'edge-signing.pub'}]\n"
    device = start(sets.clean, None, loop=True, fps=50, extra=trusted)
    waiting = device.wait("status", lambda s: s["state"] == "online"
                          and s["pipelines"]["default"]["state"] == "waiting")
    assert waiting["pipelines"]["default"]["model"] is None
    assert not device.payloads("result")
    done = edge_convert("deploy", str(digits_bundle), "--mqtt", broker.url, "--device",
                        device.name, "--sign-key", str(tmp_path / "keys" / "edge-signing.key"),
                        "--timeout", "60", timeout=CONVERT_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr + device.daemon.tail()
    assert "? → 1" in done.stdout and "1/1 device(s) updated" in done.stdout
    device.wait("result", lambda r: r["model"]["version"] == "1")
    device.wait("status", lambda s: s["pipelines"]["default"]["state"] == "serving")
    # A restart serves the deployed model at once: the config still names none.
    assert device.daemon.terminate() == 0
    seq = device.last_seq()
    again = DaemonProcess(device.daemon.args, tmp_path / "logs")
    try:
        device.wait("result", lambda r: r["seq"] > seq and r["model"]["version"] == "1")
        assert again.terminate() == 0
    finally:
        again.kill()
    assert wait_for(lambda: not again.alive, 5)


# ----- hard examples -------------------------------------------------------------------------


def test_low_margin_frames_are_kept_locally_bounded_and_never_published(
        start: Any, digits_bundle: Path, sets: Sets, tmp_path: Path) -> None:
    keep = "samples:\n  enabled: true\n  max_margin: 0.6\n  max_count: 5\n"
    device = start(sets.dark, digits_bundle, loop=True, fps=200, extra=keep)
    folder = device.state / "samples" / "default"
    device.wait("result", lambda r: r["seq"] > 150)
    assert wait_for(lambda: len(list(folder.glob("*.png"))) == 5, TIMEOUT_S)
    assert device.daemon.terminate() == 0
    assert len(list(folder.glob("*.png"))) == len(list(folder.glob("*.json"))) == 5
    listed = run_cli("samples", "list", "--state-dir", str(device.state), "--json")
    kept = json.loads(listed.stdout)
    assert len(kept) == 5 and all(s["margin"] < 0.6 and s["pipeline"] == "default"
                                  for s in kept)
    assert all(s["model"]["version"] == "1" and s["predictions"] for s in kept)
    exported = run_cli("samples", "export", str(tmp_path / "export"), "--state-dir",
                       str(device.state))
    assert "5 sample(s) exported" in exported.stdout
    assert len(list((tmp_path / "export" / "default").glob("*.png"))) == 5
    kinds = {m.topic.rsplit("/", 1)[-1] for m in device.sub.messages()}
    assert kinds <= {"result", "status", "metrics", "health"}, kinds
