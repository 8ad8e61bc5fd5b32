"""mAP@0.5, box agreement, range collapse and box label files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from converters.box_labels import coco_truths, yolo_truths
from converters.detection_eval import (
    Det,
    Truth,
    box_agreement,
    collapsed_scores,
    mean_average_precision,
    yolo_score_mask,
)
from converters.errors import ConvertError

A = (0.1, 0.1, 0.4, 0.4)
B = (0.5, 0.5, 0.9, 0.9)


def test_perfect_detections_score_one_and_misses_lower_it() -> None:
    truths = [[Truth(0, A), Truth(1, B)], [Truth(0, B)]]
    perfect = [[Det(0, 0.9, A), Det(1, 0.8, B)], [Det(0, 0.7, B)]]
    assert mean_average_precision(perfect, truths, 2)["map50"] == pytest.approx(1.0)
    missing = [[Det(0, 0.9, A)], [Det(1, 0.7, B)]]   # class 0 half found, class 1 wrong image
    result = mean_average_precision(missing, truths, 2)
    assert result["per_class"]["0"] == pytest.approx(0.5)
    assert result["per_class"]["1"] == pytest.approx(0.0)
    shifted = [[Det(0, 0.9, (0.3, 0.3, 0.6, 0.6)), Det(1, 0.8, B)], [Det(0, 0.7, B)]]
    assert mean_average_precision(shifted, truths, 2)["map50"] < 1.0


def test_box_agreement_matches_boxes_of_the_same_class() -> None:
    floats = [[Det(0, 0.9, A), Det(1, 0.8, B)]]
    assert box_agreement(floats, floats)["agreement"] == 1.0
    other = [[Det(0, 0.85, A), Det(0, 0.8, B)]]   # second box: another class
    result = box_agreement(floats, other)
    assert result["matched"] == 1 and result["agreement"] == pytest.approx(0.5)


def test_range_collapse_is_caught_and_a_healthy_head_passes() -> None:
    rng = np.random.default_rng(0)
    head = np.zeros((20, 1, 4 + 3, 50), dtype=np.float32)
    head[:, :, :4, :] = rng.uniform(0, 640, (20, 1, 4, 50))
    head[:, :, 4:, :] = rng.uniform(0, 0.95, (20, 1, 3, 50))
    mask = np.broadcast_to(yolo_score_mask((1, 7, 50), 3, "v8"), head.shape)
    problem = collapsed_scores("Identity", head, mask, scale=640 / 255)
    assert problem is not None and "'Identity'" in problem and "separate box and score" in problem
    head[:, :, :4, :] /= 640   # coordinates normalised: one scale suits both
    assert collapsed_scores("Identity", head, mask, scale=1 / 255) is None


def test_yolo_label_files_become_normalised_corner_boxes(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"")
    image.with_suffix(".txt").write_text("1 0.5 0.5 0.2 0.4\n\n")
    (truth,) = yolo_truths(image, classes=2)
    assert truth.cls == 1 and truth.box == pytest.approx((0.4, 0.3, 0.6, 0.7))
    image.with_suffix(".txt").write_text("7 0.5 0.5 0.2 0.4\n")
    with pytest.raises(ConvertError, match="line 1: class 7"):
        yolo_truths(image, classes=2)
    assert yolo_truths(tmp_path / "none.jpg", classes=2) == []


def test_coco_boxes_are_matched_by_file_and_category_name(tmp_path: Path) -> None:
    document = {"images": [{"id": 3, "file_name": "x/b.jpg", "width": 200, "height": 100}],
                "categories": [{"id": 9, "name": "cat"}],
                "annotations": [{"image_id": 3, "category_id": 9, "bbox": [20, 10, 100, 50]}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(document))
    truths = coco_truths(path, [tmp_path / "a.jpg", tmp_path / "b.jpg"], ["dog", "cat"])
    assert truths[0] == [] and truths[1][0].cls == 1
    assert truths[1][0].box == pytest.approx((0.1, 0.1, 0.6, 0.6))
    document["categories"] = [{"id": 9, "name": "cow"}]
    path.write_text(json.dumps(document))
    with pytest.raises(ConvertError, match="cow"):
        coco_truths(path, [tmp_path / "b.jpg"], ["dog", "cat"])
