from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import pytest

from edge_runtime.postprocess import OutputInfo, PostContext, build_postprocessor
from edge_runtime.postprocess.boxes import Candidates, batched_nms, iou, nms
from edge_runtime.postprocess.ssd import split_classes_scores
from edge_runtime.postprocess.yolo import YoloLayout, find_layout
from edge_runtime.preprocess import Letterbox, letterbox

LABELS = ["person", "car", "dog"]
Obj = tuple[int, float, float, float, float, float]  # class, score, x0, y0, x1, y1
OBJECTS: list[Obj] = [
    (0, 0.9, 0.10, 0.20, 0.40, 0.60),
    (1, 0.8, 0.50, 0.50, 0.90, 0.80),
    (2, 0.6, 0.05, 0.70, 0.25, 0.95),
]


def info_for(name: str, array: np.ndarray, scale: float = 0.0, zero_point: int = 0) -> OutputInfo:
    return OutputInfo(name, tuple(array.shape), str(array.dtype), scale, zero_point)


def detect(arrays: list[np.ndarray], labels: list[str] = LABELS,
           context: PostContext | None = None, infos: list[OutputInfo] | None = None,
           **params: object) -> list[dict[str, Any]]:
    infos = infos or [info_for(f"out{i}", a) for i, a in enumerate(arrays)]
    post = build_postprocessor("detection", infos, labels, params)
    return post(arrays, context or PostContext()).payload["detections"]


def assert_objects(found: list[dict[str, Any]], expected: list[Obj], tol: float = 1e-3) -> None:
    assert [d["index"] for d in found] == [e[0] for e in expected]
    for det, (cls, score, *box) in zip(found, expected, strict=True):
        assert det["label"] == (LABELS[cls] if cls < len(LABELS) else str(cls))
        assert det["score"] == pytest.approx(score, abs=tol)
        assert det["box"] == pytest.approx(box, abs=tol)


# --- SSD ---------------------------------------------------------------------------------------


def ssd_outputs(objects: list[Obj], slots: int = 10) -> dict[str, np.ndarray]:
    boxes = np.zeros((1, slots, 4), np.float32)
    classes = np.zeros((1, slots), np.float32)
    scores = np.zeros((1, slots), np.float32)
    for i, (cls, score, x0, y0, x1, y1) in enumerate(objects):
        boxes[0, i] = (y0, x0, y1, x1)
        classes[0, i], scores[0, i] = cls, score
    count = np.array([len(objects)], np.float32)
    return {"boxes": boxes, "classes": classes, "scores": scores, "count": count}


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_ssd_outputs_found_in_any_order(order: tuple[int, ...]) -> None:
    named = list(ssd_outputs(OBJECTS).values())
    arrays = [named[i] for i in order]
    infos = [info_for(f"StatefulPartitionedCall:{i}", a) for i, a in enumerate(arrays)]
    assert_objects(detect(arrays, infos=infos, decoder="ssd"), OBJECTS)


def test_ssd_is_the_default_for_four_outputs_and_respects_count() -> None:
    outputs = ssd_outputs(OBJECTS)
    outputs["scores"][0, 5] = 0.99  # beyond count: padding the runtime leaves behind
    outputs["count"][0] = 2
    assert_objects(detect(list(outputs.values())), OBJECTS[:2])


def test_ssd_score_threshold_and_max_detections() -> None:
    arrays = list(ssd_outputs(OBJECTS).values())
    assert_objects(detect(arrays, score_threshold=0.7), OBJECTS[:2])
    assert_objects(detect(arrays, max_detections=1), OBJECTS[:1])


def test_ssd_label_offset_shifts_the_label_index() -> None:
    found = detect(list(ssd_outputs(OBJECTS).values()), ["background", *LABELS], label_offset=1)
    assert [d["label"] for d in found] == LABELS
    assert [d["index"] for d in found] == [1, 2, 3]


def test_ssd_classes_told_from_scores_when_content_is_ambiguous() -> None:
    zeros, ones = np.zeros(3, np.float32), np.ones(3, np.float32)
    assert split_classes_scores(ones, zeros, ("detection_scores", "detection_classes"))[0] is zeros
    assert split_classes_scores(zeros, ones)[0] is zeros
    fractions, ids = np.array([0.5, 0.7], np.float32), np.array([1.0, 0.0], np.float32)
    assert split_classes_scores(fractions, ids)[0] is ids


@pytest.mark.parametrize(
    ("shapes", "params", "message"),
    [
        ([(1, 10, 4), (1, 10), (1, 10)], {"decoder": "ssd"}, "needs 4 outputs"),
        ([(1, 10), (1, 10), (1, 10), (1,)], {"decoder": "ssd"}, "no boxes"),
        ([(1, 10, 4), (1, 10), (1, 10), (1, 10)], {"decoder": "ssd"}, "no count"),
        ([(1, 10, 4), (1, 7), (1, 10), (1,)], {"decoder": "ssd"}, "do not fit"),
        ([(1, 10, 4), (1, 10)], {}, "needs a 'decoder'"),
        ([(1, 84, 100)], {"decoder": "centernet"}, "unknown detection decoder"),
        ([(1, 10, 4), (1, 10), (1, 10), (1,)], {"score_threshold": 2}, "score_threshold"),
        ([(1, 10, 4), (1, 10), (1, 10), (1,)], {"input_width": 320}, "go together"),
        ([(1, 84, 100), (1, 2)], {"decoder": "yolo"}, "one output"),
        ([(1, 50, 100)], {"decoder": "yolo"}, "fits neither"),
    ],
)
def test_outputs_that_do_not_fit_are_refused(shapes: list[tuple[int, ...]],
                                              params: dict[str, object], message: str) -> None:
    infos = [OutputInfo(f"o{i}", shape, "float32") for i, shape in enumerate(shapes)]
    with pytest.raises(ValueError, match=message):
        build_postprocessor("detection", infos, LABELS, params)


# --- letterbox ---------------------------------------------------------------------------------


def to_input(box: tuple[float, ...], lb: Letterbox, size: tuple[int, int]) -> list[float]:
    """Forward letterbox mapping: source-normalised box → input-normalised box."""
    x0, y0, x1, y1 = box
    w, h = size
    xs = [(x * lb.src_width * lb.scale_x + lb.pad_x) / w for x in (x0, x1)]
    ys = [(y * lb.src_height * lb.scale_y + lb.pad_y) / h for y in (y0, y1)]
    return [xs[0], ys[0], xs[1], ys[1]]


def on_input(objects: list[Obj], lb: Letterbox, size: tuple[int, int]) -> list[Obj]:
    mapped = []
    for cls, score, *box in objects:
        x0, y0, x1, y1 = to_input(tuple(box), lb, size)
        mapped.append((cls, score, x0, y0, x1, y1))
    return mapped


def test_letterboxed_ssd_boxes_map_back_to_the_source_image() -> None:
    _, lb = letterbox(np.zeros((100, 200, 3), np.uint8), 100, 100)
    assert to_input((0, 0, 1, 1), lb, (100, 100)) == pytest.approx([0, 0.25, 1, 0.75])
    source: list[Obj] = [(0, 0.9, 0.2, 0.1, 0.6, 0.9), (1, 0.8, 0.0, 0.0, 1.0, 1.0)]
    mapped = on_input(source, lb, (100, 100))
    found = detect(list(ssd_outputs(mapped).values()), context=PostContext(letterbox=lb))
    assert_objects(found, source)


def test_box_entirely_in_the_padding_is_dropped() -> None:
    _, lb = letterbox(np.zeros((100, 200, 3), np.uint8), 100, 100)
    in_padding: list[Obj] = [(0, 0.9, 0.1, 0.0, 0.5, 0.2)]  # y within the top 25 % band of padding
    found = detect(list(ssd_outputs(in_padding).values()), context=PostContext(letterbox=lb))
    assert found == []


# --- YOLO --------------------------------------------------------------------------------------


def yolo_rows(objects: list[Obj], classes: int, noise: int = 40) -> np.ndarray:
    """v5 rows (x, y, w, h, obj, class scores...) for objects plus low-confidence noise rows."""
    rng = np.random.default_rng(1)
    rows = np.zeros((len(objects) + noise, 5 + classes), np.float32)
    for i, (cls, score, x0, y0, x1, y1) in enumerate(objects):
        rows[i, :4] = ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
        rows[i, 4] = 1.0
        rows[i, 5 + cls] = score
    rows[len(objects):, :4] = rng.uniform(0.2, 0.8, (noise, 4))
    rows[len(objects):, 4] = rng.uniform(0.0, 0.4, noise)
    rows[len(objects):, 5:] = rng.uniform(0.0, 0.5, (noise, classes))
    return rng.permutation(rows)


def v8_from_rows(rows: np.ndarray) -> np.ndarray:
    """Same predictions as a v8 head: scores already combined, no objectness, transposed."""
    table = np.concatenate([rows[:, :4], rows[:, 5:] * rows[:, 4:5]], axis=1)
    return table.T[None].astype(np.float32)


def test_yolo_v5_layout() -> None:
    head = yolo_rows(OBJECTS, 3)[None]
    assert_objects(detect([head]), OBJECTS)


def test_yolo_v8_layout_gives_the_same_objects() -> None:
    head = v8_from_rows(yolo_rows(OBJECTS, 3))
    assert head.shape == (1, 7, 43)
    assert_objects(detect([head], decoder="yolo"), OBJECTS)


def test_named_yolo_decoders_fix_the_layout() -> None:
    assert_objects(detect([yolo_rows(OBJECTS, 3)[None]], decoder="yolov5"), OBJECTS)
    assert_objects(detect([v8_from_rows(yolo_rows(OBJECTS, 3))], decoder="yolov8"), OBJECTS)
    with pytest.raises(ValueError, match="fits neither"):
        detect([yolo_rows(OBJECTS, 3)[None]], decoder="yolov8")


def test_yolo_v5_score_is_objectness_times_class_score() -> None:
    rows = yolo_rows([(1, 0.8, 0.1, 0.1, 0.3, 0.3)], 3, noise=0)
    rows[0, 4] = 0.5
    found = detect([rows[None]])
    assert found[0]["score"] == pytest.approx(0.4)


def test_yolo_pixel_coordinates_divided_by_the_input_size() -> None:
    rows = yolo_rows(OBJECTS, 3)
    rows[:, [0, 2]] *= 320
    rows[:, [1, 3]] *= 240
    assert_objects(detect([rows[None]], input_width=320, input_height=240), OBJECTS)
    with pytest.raises(ValueError, match="input_width"):
        detect([rows[None]])


def test_yolo_pixel_coordinates_with_letterbox_and_no_size_params() -> None:
    _, lb = letterbox(np.zeros((240, 640, 3), np.uint8), 320, 320)
    source: list[Obj] = [(0, 0.9, 0.2, 0.1, 0.6, 0.9), (2, 0.7, 0.7, 0.3, 0.95, 0.6)]
    rows = yolo_rows(on_input(source, lb, (320, 320)), 3)
    rows[:, :4] *= 320
    found = detect([v8_from_rows(rows)], context=PostContext(letterbox=lb))
    assert_objects(found, source)


def test_yolo_int8_quantized_head() -> None:
    head = v8_from_rows(yolo_rows(OBJECTS, 3))
    scale, zero_point = 1 / 255, -128
    q = np.clip(np.round(head / scale) + zero_point, -128, 127).astype(np.int8)
    infos = [info_for("Identity", q, scale, zero_point)]
    assert_objects(detect([q], infos=infos), OBJECTS, tol=scale)


def test_yolo_class_aware_nms() -> None:
    overlapping: list[Obj] = [
        (0, 0.9, 0.10, 0.10, 0.50, 0.50),
        (0, 0.7, 0.12, 0.12, 0.52, 0.52),  # same class, IoU ≈ 0.82: suppressed
        (1, 0.8, 0.11, 0.11, 0.51, 0.51),  # other class: kept
        (0, 0.6, 0.60, 0.60, 0.90, 0.90),  # same class, far away: kept
    ]
    found = detect([yolo_rows(overlapping, 3, noise=0)[None]])
    assert_objects(found, [overlapping[0], overlapping[2], overlapping[3]])
    loose = detect([yolo_rows(overlapping, 3, noise=0)[None]], iou_threshold=0.9)
    assert len(loose) == 4


def test_yolo_max_detections() -> None:
    found = detect([yolo_rows(OBJECTS, 3)[None]], max_detections=2)
    assert_objects(found, OBJECTS[:2])


def test_detection_outcome_top_fields_and_json() -> None:
    post = build_postprocessor("detection", [OutputInfo("y", (1, 43, 8), "float32")], LABELS)
    outcome = post([yolo_rows(OBJECTS, 3)[None]], PostContext())
    assert (outcome.top_label, outcome.top_index) == ("person", 0)
    assert outcome.top_score == pytest.approx(0.9)
    assert json.loads(json.dumps(outcome.payload)) == outcome.payload


@pytest.mark.parametrize(
    ("shape", "labels", "forced", "expected"),
    [
        ((1, 84, 8400), 80, "auto", YoloLayout("v8", True)),
        ((1, 25200, 85), 80, "auto", YoloLayout("v5", False)),
        ((1, 8400, 84), 80, "auto", YoloLayout("v8", False)),
        ((1, 84, 8400), 0, "auto", YoloLayout("v8", True)),
        ((1, 25200, 85), 0, "auto", YoloLayout("v5", False)),
        ((1, 2100, 9), 0, "v8", YoloLayout("v8", False)),
    ],
)
def test_yolo_layout_from_shape_and_labels(shape: tuple[int, ...], labels: int, forced: str,
                                           expected: YoloLayout) -> None:
    assert find_layout(shape, labels, forced) == expected


# --- NMS primitives ----------------------------------------------------------------------------


def test_iou_values() -> None:
    box = np.array([0, 0, 2, 2], np.float32)
    others = np.array([[1, 0, 3, 2], [0, 0, 2, 2], [5, 5, 6, 6], [0, 0, 0, 0]], np.float32)
    assert iou(box, others) == pytest.approx([1 / 3, 1.0, 0.0, 0.0])


def test_nms_keeps_best_first_and_stops_at_max() -> None:
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 1.05], [2, 2, 3, 3], [4, 4, 5, 5]], np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.5, 10).tolist() == [1, 2, 3]
    assert nms(boxes, scores, 0.5, 2).tolist() == [1, 2]


def test_batched_nms_never_mixes_classes() -> None:
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.float32)
    candidates = Candidates(boxes, np.array([0.9, 0.8], np.float32), np.array([0, 1]))
    assert len(batched_nms(candidates, 0.5, 10)) == 2
    same = Candidates(boxes, candidates.scores, np.array([1, 1]))
    assert len(batched_nms(same, 0.5, 10)) == 1


def test_yolo_keeps_the_best_when_thousands_pass_the_threshold() -> None:
    rng = np.random.default_rng(7)
    rows = np.zeros((6000, 8), np.float32)
    rows[:, :4] = rng.uniform(0.3, 0.7, (6000, 4))
    rows[:, 4], rows[:, 5] = 1.0, rng.uniform(0.3, 0.6, 6000)
    rows[4321, :6] = (0.5, 0.5, 0.2, 0.2, 1.0, 0.95)
    found = detect([rows[None]])
    assert found[0]["score"] == pytest.approx(0.95)
    assert found[0]["box"] == pytest.approx([0.4, 0.4, 0.6, 0.6])
