"""A detector end to end: converted by ``edge-convert`` with its decoder, served by the daemon
over real photographs, and the boxes that reached the broker scored against the ground truth.

The detector is the one ``support.trained`` trains (shapes pasted onto real photographs, one
YOLOv8-layout output); the daemon learns the decoder from the bundle's manifest alone.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.daemon import Mosquitto, seqs
from support.trained import Trained
from test_daemon_cli import run_to_end

from converters.box_labels import yolo_truths
from converters.detection_eval import Det, mean_average_precision

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto]


def test_published_boxes_score_as_the_bundle_says(
        broker: Mosquitto, detector_convert: tuple[subprocess.CompletedProcess[str], Path],
        trained: Trained, tmp_path: Path) -> None:
    result, bundle = detector_convert
    assert result.returncode in (0, 4), result.stderr[-3000:]
    manifest = json.loads((bundle / "manifest.json").read_text())
    images = sorted(trained.detector.val.glob("*.png"))
    run = run_to_end(broker, tmp_path, bundle, trained.detector.val, expect=len(images))
    assert sorted(set(seqs(run.results))) == list(range(1, len(images) + 1))
    by_ref = {r["frame"]["ref"]: r for r in run.results}
    assert sorted(by_ref) == [p.name for p in images]
    published: list[list[Det]] = []
    for path in images:
        payload = by_ref[path.name]
        assert payload["task"] == "detection"
        for d in payload["detections"]:
            assert d["label"] in ("circle", "square", "triangle") and d["score"] >= 0.25
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, d
        published.append([Det(d["index"], d["score"], tuple(d["box"]))
                          for d in payload["detections"]])
    truths = [yolo_truths(p, 3) for p in images]
    scored = mean_average_precision(published, truths, 3)["map50"]
    assert scored > 0.3, scored
    # What reached the broker scores as the converter measured the int8 model on the host.
    assert scored == pytest.approx(manifest["metrics"]["detection"]["map50_int8"], abs=0.01)
