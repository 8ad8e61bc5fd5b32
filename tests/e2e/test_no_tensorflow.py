"""The device side never imports TensorFlow or Keras (SPEC §2), not even lazily or on a fallback
path: a child interpreter where both are unimportable runs the whole daemon end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.mosquitto import Mosquitto, Subscriber, mosquitto_available

# Runs in the child. Every attempt to import a blocked module is recorded, then refused.
CHILD = r"""
import importlib.abc, json, sys

BLOCKED = ("tensorflow", "keras", "tf_keras")
attempts = []

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"{name} is blocked on the device side")
        return None

sys.meta_path.insert(0, Blocker())

from edge_runtime.cli import main

codes = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as exc:
        codes.append(exc.code)
    sys.stdout.flush()

loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("\nCHILD-REPORT " + json.dumps({"codes": codes, "attempts": attempts, "loaded": loaded,
                                      "litert": "ai_edge_litert" in sys.modules}))
"""


def run_child(commands: list[list[str]]) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(commands)],
                          capture_output=True, text=True, timeout=120, check=False)
    report = [line for line in done.stdout.splitlines() if line.startswith("CHILD-REPORT ")]
    assert report, f"child failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
    data: dict[str, object] = json.loads(report[-1].removeprefix("CHILD-REPORT "))
    data["stderr"] = done.stderr
    return data


@pytest.mark.mosquitto
def test_the_daemon_runs_end_to_end_without_tensorflow(digits: Path, digits_bundle: Path,
                                                       tmp_path: Path) -> None:
    if not mosquitto_available():
        pytest.skip("Mosquitto not installed")
    frames = 12
    with Mosquitto(tmp_path / "mosquitto") as broker, \
            Subscriber(broker, "edge/no-tf/default/result") as sub:
        report = run_child([
            ["run", "--bundle", str(digits_bundle), "--source", str(digits / "images" / "val"),
             "--mqtt", broker.url, "--device-id", "no-tf", "--state-dir", str(tmp_path / "s"),
             "--max-frames", str(frames)],
            ["info", str(digits_bundle)],
            ["bench", str(digits_bundle), "--frames", "10", "--json"],
        ])
        assert report["codes"] == [0, 0, 0], report["stderr"]
        assert sub.wait_for(frames, 10), report["stderr"]
    assert report["litert"] is True, "the model did not run on LiteRT"
    assert report["loaded"] == [], report
    assert report["attempts"] == [], f"tried to import {report['attempts']}"
    assert {p["seq"] for p in sub.payloads()} == set(range(1, frames + 1))


def test_the_blocker_in_the_child_does_block() -> None:
    child = r"""
import sys
sys.argv = ["-", "[]"]
""" + CHILD.replace("from edge_runtime.cli import main", "import keras")
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0
    assert "keras is blocked on the device side" in done.stderr
