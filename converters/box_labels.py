"""Ground-truth boxes for validating a detector: YOLO ``.txt`` files beside the images, or a COCO
JSON file. Boxes come out as the daemon publishes them: ``[x_min, y_min, x_max, y_max]`` in [0, 1].
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from converters.detection_eval import Truth
from converters.errors import ConvertError

MAX_JSON_BYTES = 256 * 2**20


def yolo_truths(image: Path, classes: int) -> list[Truth]:
    """``image``'s boxes from ``<image stem>.txt`` beside it (``class cx cy w h``, normalised);
    an image without a file has no objects."""
    path = image.with_suffix(".txt")
    if not path.is_file():
        return []
    truths: list[Truth] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:5])
        except (ValueError, IndexError):
            raise ConvertError(f"{path}: line {number}: expected 'class cx cy w h', got "
                               f"{line.strip()[:60]!r}") from None
        if not 0 <= cls < classes or len(parts) != 5:
            raise ConvertError(f"{path}: line {number}: class {cls} is not one of the {classes} "
                               "labels" if len(parts) == 5 else
                               f"{path}: line {number}: expected 5 numbers")
        if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
            raise ConvertError(f"{path}: line {number}: box values must be normalised to [0, 1]")
        truths.append(Truth(cls, _clip((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))))
    return truths


def coco_truths(path: Path, images: Sequence[Path], labels: Sequence[str]) -> list[list[Truth]]:
    """Boxes for ``images`` (matched by file name) from a COCO JSON; categories are matched to
    ``labels`` by name."""
    document = _read_json(path)
    categories = {c.get("id"): c.get("name") for c in document.get("categories", [])
                  if isinstance(c, dict)}
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({str(n) for n in categories.values() if n not in index})
    if unknown:
        raise ConvertError(f"{path}: categories {', '.join(unknown[:5])} are not in the labels")
    by_name: dict[str, dict[str, Any]] = {}
    for entry in document.get("images", []):
        if isinstance(entry, dict) and isinstance(entry.get("file_name"), str):
            by_name[Path(entry["file_name"]).name] = entry
    boxes: dict[Any, list[Truth]] = {}
    for ann in document.get("annotations", []):
        if not isinstance(ann, dict):
            continue
        image = next((e for e in by_name.values() if e.get("id") == ann.get("image_id")), None)
        bbox = ann.get("bbox")
        if image is None or not isinstance(bbox, list) or len(bbox) != 4:
            continue
        width, height = float(image.get("width") or 0), float(image.get("height") or 0)
        if width <= 0 or height <= 0:
            raise ConvertError(f"{path}: image {image.get('file_name')} has no width/height")
        x, y, w, h = (float(v) for v in bbox)
        name = categories.get(ann.get("category_id"))
        boxes.setdefault(image.get("id"), []).append(
            Truth(index[str(name)], _clip((x / width, y / height, (x + w) / width,
                                           (y + h) / height))))
    return [boxes.get((by_name.get(p.name) or {}).get("id"), []) for p in images]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ConvertError(f"{path}: larger than {MAX_JSON_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ConvertError(f"{path}: not a readable COCO JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: a COCO file is a JSON object")
    return data


def _clip(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (min(1.0, max(0.0, v)) for v in box)
    return x1, y1, x2, y2
