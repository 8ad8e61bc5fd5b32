"""The training jobs ``converters.child`` runs (TensorFlow side)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _prune(job: dict[str, Any]) -> dict[str, Any]:
    from .prune import job_prune

    return job_prune(job)


def _qat(job: dict[str, Any]) -> dict[str, Any]:
    from .qat import job_qat

    return job_qat(job)


def _distill(job: dict[str, Any]) -> dict[str, Any]:
    from .distill import job_distill

    return job_distill(job)


JOBS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "prune": _prune, "qat": _qat, "distill": _distill,
}
