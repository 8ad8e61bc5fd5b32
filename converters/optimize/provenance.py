"""Where a distilled student came from, kept inside its ``.keras`` file.

A ``.keras`` file is a zip archive; Keras reads the members it knows and ignores others, so the
record travels with the model wherever it is copied, and ``convert`` reads it without TensorFlow.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

MEMBER = "edge-distillation.json"


def write_provenance(model: Path, record: dict[str, Any]) -> None:
    with zipfile.ZipFile(model, "a") as archive:
        archive.writestr(MEMBER, json.dumps(record, indent=2))


def read_provenance(model: Path) -> dict[str, Any] | None:
    if model.suffix.lower() != ".keras" or not zipfile.is_zipfile(model):
        return None
    with zipfile.ZipFile(model) as archive:
        if MEMBER not in archive.namelist():
            return None
        data: dict[str, Any] = json.loads(archive.read(MEMBER))
        return data


def distilled_from(model: Path) -> dict[str, Any] | None:
    """The manifest's ``optimization.distilled_from`` (SPEC §8) for a student file."""
    record = read_provenance(model)
    if record is None:
        return None
    teacher = record.get("teacher", {})
    return {"sha256": teacher.get("sha256"), "accuracy": teacher.get("accuracy"),
            "temperature": record.get("temperature"), "alpha": record.get("alpha")}
