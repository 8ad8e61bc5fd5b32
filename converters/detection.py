"""A detector through the converter: the decoder it needs, its ground-truth boxes, its
detections decoded by the daemon's own post-processing, mAP@0.5 and box agreement float vs int8
with bootstrap intervals, and the range-collapse check on its quantized outputs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends import load_backend
from edge_runtime.postprocess import OutputInfo, PostContext, build_postprocessor
from edge_runtime.postprocess.detect import COMMON_PARAMS, DECODER_PARAMS, DECODERS
from edge_runtime.postprocess.yolo import find_layout
from edge_runtime.preprocess import InputSpec, Preprocessor

from .box_labels import coco_truths, yolo_truths
from .data import Dataset
from .detection_eval import Det, Truth, collapsed_scores
from .detection_stats import bootstrap_drop
from .errors import ConvertError
from .evidence import DropEvidence
from .verify import Comparison

NUMBER_PARAMS = ("score_threshold", "iou_threshold")
INTEGER_PARAMS = ("max_detections", "input_width", "input_height")


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs from the command line, numbers where the decoder wants numbers."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConvertError(f"--decoder-param {pair!r}: expected KEY=VALUE")
        try:
            params[key] = (int(value) if key in INTEGER_PARAMS else
                           float(value) if key in NUMBER_PARAMS else value)
        except ValueError:
            raise ConvertError(f"--decoder-param {key}: {value!r} is not a number") from None
    return params


def decoder_record(name: str | None, params: dict[str, Any], outputs: Sequence[OutputInfo],
                   labels: Sequence[str], spec: InputSpec) -> dict[str, Any]:
    """The manifest's ``decoder``: the name and its parameters, checked by building the very
    post-processor the daemon will build."""
    name = (name or {4: "ssd", 1: "yolo"}.get(len(outputs)) or "").lower()
    if name not in DECODERS:
        raise ConvertError(f"a detector with {len(outputs)} outputs needs --decoder "
                           f"({', '.join(DECODERS)})")
    unknown = sorted(set(params) - set(COMMON_PARAMS) - set(DECODER_PARAMS[name]))
    if unknown:
        known = sorted(set(COMMON_PARAMS + DECODER_PARAMS[name]) - {"decoder"})
        raise ConvertError(f"--decoder-param {unknown[0]}: not a parameter of decoder {name} "
                           f"({', '.join(known)})")
    record = {"decoder": name, **params}
    try:
        build_postprocessor("detection", outputs, labels, _with_input_size(record, spec))
    except ValueError as exc:
        raise ConvertError(f"decoder {name}: {exc}") from None
    return record


def _with_input_size(record: dict[str, Any], spec: InputSpec) -> dict[str, Any]:
    if not spec.is_image:
        return dict(record)
    return {"input_width": spec.width, "input_height": spec.height, **record}


def load_truths(data: Dataset, root: Path | None, boxes: Path | None,
                labels: Sequence[str] | None) -> list[list[Truth]] | None:
    """Ground truth for ``data``'s images: a COCO JSON (``boxes``) or YOLO ``.txt`` files beside
    the images; None when there is none (the gate then uses box agreement)."""
    if root is None or not root.is_dir() or not data.refs:
        if boxes is not None:
            raise ConvertError("--boxes needs the validation (or calibration) data as an image "
                               "folder")
        return None
    images = [root / ref for ref in data.refs]
    if boxes is not None:
        if not labels:
            raise ConvertError("--boxes (COCO) matches categories by name: give --labels")
        return coco_truths(boxes, images, labels)
    if not any(p.with_suffix(".txt").is_file() for p in images):
        return None
    classes = len(labels) if labels else 1 << 30
    return [yolo_truths(p, classes) for p in images]


def detect_all(model: Path, data: Dataset, base: InputSpec, record: dict[str, Any],
               labels: Sequence[str], threads: int = 1) -> list[list[Det]]:
    """Every image through the daemon's preprocessing, the model and its post-processing."""
    backend = load_backend(model, threads=max(1, min(threads, os.cpu_count() or 1)))
    try:
        info = backend.inputs[0]
        spec = base.with_quantization(info.dtype, float(info.scale), int(info.zero_point))
        pre = Preprocessor(spec)
        outputs = [OutputInfo(o.name, tuple(o.shape), o.dtype, o.scale, o.zero_point)
                   for o in backend.outputs]
        post = build_postprocessor("detection", outputs, labels, _with_input_size(record, spec))
        found: list[list[Det]] = []
        for item in data.items:
            def fill(buf: np.ndarray, item: np.ndarray = item) -> None:
                pre(item, out=buf)

            backend.fill_input(fill)
            backend.invoke()
            context = PostContext(letterbox=pre.last_letterbox if spec.is_image else None)
            outcome = post(backend.get_outputs(), context)
            found.append([Det(int(d["index"]), float(d["score"]), tuple(d["box"]))
                          for d in outcome.payload["detections"]])
        return found
    finally:
        backend.close()


def compare_detections(floats: Sequence[Sequence[Det]], int8: Sequence[Sequence[Det]],
                       truths: Sequence[Sequence[Truth]] | None, classes: int) -> Comparison:
    """mAP@0.5 float vs int8 (with ground truth) and box agreement, each with a 95% bootstrap
    interval over images; the gate's evidence is the mAP drop, or without ground truth the box
    disagreement."""
    stats = bootstrap_drop(floats, int8, truths, classes)
    n = len(floats)
    agreement = stats["box_agreement"]
    intervals: dict[str, Any] = {"box_agreement": agreement}
    if truths is not None:
        intervals["map50_float"], intervals["map50_int8"] = stats["map50_float"], \
            stats["map50_int8"]
        intervals["map50_drop_points"] = stats["map50_drop_points"]
        drop = stats["map50_drop_points"]
        evidence = DropEvidence("mAP", drop["value"] / 100,
                                (drop["ci95"][0] / 100, drop["ci95"][1] / 100), n,
                                stats["map_variance"])
    else:
        low, high = agreement["ci95"]
        evidence = DropEvidence("box disagreement", 1 - agreement["value"], (1 - high, 1 - low),
                                n, stats["agreement_variance"])
    detection = {
        "images": n, "matched": stats["matched"], "float_boxes": stats["float_boxes"],
        "int8_boxes": stats["int8_boxes"], "box_agreement": agreement["value"],
        "map50_float": intervals.get("map50_float", {}).get("value"),
        "map50_int8": intervals.get("map50_int8", {}).get("value"),
        "ground_truth": truths is not None, "intervals": intervals,
    }
    return Comparison(None, None, agreement["value"], n,
                      evidence.measured * 100, evidence.basis, stats["matched"],
                      evidence=evidence, detection=detection)


def collapse_problems(model: Path, float_outputs: np.ndarray, record: dict[str, Any],
                      labels: Sequence[str]) -> list[str]:
    """For each quantized output holding coordinates and scores together (a YOLO head), whether
    its one scale leaves the scores any steps; one line per output that collapsed."""
    if not record.get("decoder", "").startswith("yolo"):
        return []
    backend = load_backend(model, threads=1)
    try:
        output = backend.outputs[0]
    finally:
        backend.close()
    problem = _collapsed(output.name, tuple(int(v) for v in output.shape), float_outputs,
                         float(output.scale), record, labels)
    return [problem] if problem else []


def predicted_collapse(float_model: Path, calibration_outputs: np.ndarray,
                       record: dict[str, Any], labels: Sequence[str]) -> str | None:
    """The same check before quantizing: the int8 scale an output will get is its calibration
    range (zero included) over 255 steps."""
    if not record.get("decoder", "").startswith("yolo") or not calibration_outputs.size:
        return None
    backend = load_backend(float_model, threads=1)
    try:
        output = backend.outputs[0]
    finally:
        backend.close()
    scale = (max(0.0, float(calibration_outputs.max()))
             - min(0.0, float(calibration_outputs.min()))) / 255.0
    return _collapsed(output.name, tuple(int(v) for v in output.shape), calibration_outputs,
                      scale, record, labels)


def _collapsed(name: str, shape: tuple[int, ...], float_outputs: np.ndarray, scale: float,
               record: dict[str, Any], labels: Sequence[str]) -> str | None:
    forced = {"yolov5": "v5", "yolov8": "v8"}.get(record["decoder"], "auto")
    try:
        layout = find_layout(shape, len(labels), record.get("layout", forced))
    except ValueError:
        return None
    values = float_outputs.reshape(len(float_outputs), *shape)
    mask = np.zeros(values.shape, dtype=bool)
    if layout.attributes_first:
        mask[..., 4:, :] = True
    else:
        mask[..., 4:] = True
    return collapsed_scores(name, values, mask, scale)
