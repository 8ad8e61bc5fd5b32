"""Decoder for the 4-output ``TFLite_Detection_PostProcess`` (SSD-style) head.

Outputs are boxes [1, N, 4] (ymin, xmin, ymax, xmax normalised to the input), classes [1, N],
scores [1, N] and count [1]. Exporters disagree on their order, so boxes and count are found by
shape, and classes are told from scores by content (integers vs. fractions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_runtime.postprocess.boxes import Candidates, Decoder, DetectionSettings, yxyx_to_xyxy
from edge_runtime.postprocess.params import Params
from edge_runtime.postprocess.types import OutputInfo, PostContext

PARAMS = ("label_offset",)
INTEGER_TOLERANCE = 1e-3


@dataclass(frozen=True, slots=True)
class SsdLayout:
    """Positions of the four outputs; ``pair`` holds classes and scores in unknown order."""

    boxes: int
    count: int
    pair: tuple[int, int]
    pair_names: tuple[str, str]


def find_layout(outputs: Sequence[OutputInfo]) -> SsdLayout:
    if len(outputs) != 4:
        raise ValueError(
            f"detection decoder 'ssd' needs 4 outputs (boxes, classes, scores, count); "
            f"the model has {len(outputs)}"
        )
    boxes = _find_boxes(outputs)
    rest = [i for i in range(4) if i != boxes]
    count = _find_count(outputs, rest)
    first, second = (i for i in rest if i != count)
    n = outputs[boxes].size // 4
    if outputs[first].size != n or outputs[second].size != n:
        shapes = [list(o.shape) for o in outputs]
        raise ValueError(f"ssd outputs {shapes} do not fit boxes [1, N, 4], classes and scores "
                         f"[1, N], count [1]")
    return SsdLayout(boxes, count, (first, second),
                     (outputs[first].name.lower(), outputs[second].name.lower()))


def _find_boxes(outputs: Sequence[OutputInfo]) -> int:
    candidates = [i for i, o in enumerate(outputs) if len(o.shape) >= 2 and o.shape[-1] == 4]
    if not candidates:
        shapes = [list(o.shape) for o in outputs]
        raise ValueError(f"ssd outputs {shapes} have no boxes tensor shaped [1, N, 4]")
    return max(candidates, key=lambda i: len(outputs[i].shape))


def _find_count(outputs: Sequence[OutputInfo], indices: Sequence[int]) -> int:
    candidates = [i for i in indices if outputs[i].size == 1]
    if not candidates:
        shapes = [list(o.shape) for o in outputs]
        raise ValueError(f"ssd outputs {shapes} have no count tensor shaped [1]")
    return min(candidates, key=lambda i: len(outputs[i].shape))


def split_classes_scores(a: np.ndarray, b: np.ndarray, names: tuple[str, str] = ("", ""),
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(classes, scores)``: class ids are whole numbers, scores are fractions in [0, 1].

    When content cannot tell (e.g. every value is 0 or 1), names decide, then the TFLite order
    (classes before scores).
    """
    a_whole, b_whole = _whole(a), _whole(b)
    if a_whole != b_whole:
        return (a, b) if a_whole else (b, a)
    a_big, b_big = _above_one(a), _above_one(b)
    if a_big != b_big:
        return (a, b) if a_big else (b, a)
    if "score" in names[0] or "class" in names[1]:
        return b, a
    return a, b


def _whole(values: np.ndarray) -> bool:
    return bool(np.all(np.abs(values - np.round(values)) <= INTEGER_TOLERANCE))


def _above_one(values: np.ndarray) -> bool:
    return bool(values.size and values.max() > 1.0 + INTEGER_TOLERANCE)


def build_ssd(outputs: Sequence[OutputInfo], labels: Sequence[str], params: Params,
              settings: DetectionSettings) -> Decoder:
    layout = find_layout(outputs)
    label_offset = params.integer("label_offset", 0)

    def decode(arrays: Sequence[np.ndarray], context: PostContext) -> Candidates:
        boxes = arrays[layout.boxes].reshape(-1, 4)
        count = int(np.clip(np.round(float(arrays[layout.count].reshape(-1)[0])), 0, len(boxes)))
        first, second = (arrays[i].reshape(-1)[:count] for i in layout.pair)
        classes, scores = split_classes_scores(first, second, layout.pair_names)
        ids = np.round(classes).astype(np.int64) + label_offset
        return Candidates(yxyx_to_xyxy(boxes[:count]), scores.astype(np.float32), ids)

    return decode
