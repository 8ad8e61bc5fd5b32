"""Object detection: a registered decoder turns outputs into boxes; this module does the rest.

Decoders register by name in :data:`DECODERS`; adding one is a small module and one line here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from edge_runtime.postprocess import ssd, yolo
from edge_runtime.postprocess.boxes import Candidates, Decoder, DetectionSettings, to_source
from edge_runtime.postprocess.params import Params
from edge_runtime.postprocess.types import (
    BOX_DECIMALS,
    Detection,
    Outcome,
    OutputInfo,
    PostContext,
    Postprocess,
    dequantize_outputs,
    label_for,
    round_score,
)

TASK = "detection"
DecoderFactory = Callable[[Sequence[OutputInfo], Sequence[str], Params, DetectionSettings],
                          Decoder]
DECODERS: dict[str, DecoderFactory] = {"ssd": ssd.build_ssd, "yolo": yolo.build_yolo,
                                       "yolov5": yolo.build_yolov5, "yolov8": yolo.build_yolov8}
DECODER_PARAMS: dict[str, tuple[str, ...]] = {"ssd": ssd.PARAMS, "yolo": yolo.PARAMS,
                                              "yolov5": yolo.PARAMS, "yolov8": yolo.PARAMS}
COMMON_PARAMS = ("decoder", "score_threshold", "iou_threshold", "max_detections",
                 "input_width", "input_height")


def build_detection(outputs: Sequence[OutputInfo], labels: Sequence[str],
                    params: Mapping[str, Any] | None) -> Postprocess:
    reader = Params(TASK, params)
    name = _decoder_name(reader, len(outputs))
    reader.warn_unknown(COMMON_PARAMS + DECODER_PARAMS[name])
    settings = read_settings(reader)
    labels = tuple(labels)
    decoder = DECODERS[name](outputs, labels, reader, settings)

    def detect(arrays: Sequence[np.ndarray], context: PostContext) -> Outcome:
        candidates = decoder(dequantize_outputs(arrays, outputs), context)
        best = strongest(candidates, settings)
        boxes = to_source(best.boxes, context.letterbox, settings.input_size)
        return detection_outcome(make_detections(best, boxes, labels))

    return detect


def _decoder_name(reader: Params, output_count: int) -> str:
    """The named decoder, or the one the output count implies (4 → ssd, 1 → yolo)."""
    default = {4: "ssd", 1: "yolo"}.get(output_count)
    name = reader.raw("decoder", default)
    if name is None:
        raise ValueError(f"detection with {output_count} outputs needs a 'decoder' "
                         f"({', '.join(DECODERS)})")
    if not isinstance(name, str) or name.lower() not in DECODERS:
        raise ValueError(f"unknown detection decoder {name!r}; known: {', '.join(DECODERS)}")
    return name.lower()


def read_settings(reader: Params) -> DetectionSettings:
    width = reader.optional_integer("input_width")
    height = reader.optional_integer("input_height")
    if (width is None) != (height is None):
        raise ValueError("detection parameters 'input_width' and 'input_height' go together")
    return DetectionSettings(
        score_threshold=reader.number("score_threshold", 0.25, 0.0, 1.0),
        iou_threshold=reader.number("iou_threshold", 0.45, 0.0, 1.0),
        max_detections=reader.integer("max_detections", 100, minimum=1),
        input_size=(width, height) if width is not None and height is not None else None,
    )


def strongest(candidates: Candidates, settings: DetectionSettings) -> Candidates:
    """Candidates above the score threshold, best first, at most ``max_detections``."""
    keep = np.flatnonzero(candidates.scores >= settings.score_threshold)
    order = keep[np.argsort(-candidates.scores[keep], kind="stable")]
    return candidates.take(order[:settings.max_detections])


def make_detections(candidates: Candidates, boxes: np.ndarray, labels: Sequence[str],
                    ) -> list[Detection]:
    """Named detections; boxes that vanish once mapped to the source (all padding) are dropped."""
    found = []
    for box, score, index in zip(boxes, candidates.scores, candidates.classes, strict=True):
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        x0, y0, x1, y1 = (round(float(v), BOX_DECIMALS) for v in box)
        found.append(Detection(label_for(int(index), labels), int(index), round_score(score),
                               (x0, y0, x1, y1)))
    return found


def detection_outcome(detections: Sequence[Detection]) -> Outcome:
    payload = {"detections": [d.as_dict() for d in detections]}
    if not detections:
        return Outcome(TASK, payload)
    best = max(detections, key=lambda d: d.score)
    return Outcome(TASK, payload, best.label, best.index, best.score)
