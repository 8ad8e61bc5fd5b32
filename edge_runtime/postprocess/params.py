"""Typed reads of post-processing parameters, each failure one line naming the key."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)


def is_number(value: Any) -> bool:
    """A finite int or float (a bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Params:
    """A read-only view of a task's parameters that checks types as values are read."""

    def __init__(self, task: str, values: Mapping[str, Any] | None) -> None:
        self.task = task
        self._values: Mapping[str, Any] = values or {}

    def __contains__(self, key: str) -> bool:
        return self._values.get(key) is not None

    def raw(self, key: str, default: Any = None) -> Any:
        value = self._values.get(key)
        return default if value is None else value

    def integer(self, key: str, default: int, minimum: int | None = None) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{self.task} parameter '{key}' must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ValueError(f"{self.task} parameter '{key}' must be ≥ {minimum}, got {value}")
        return value

    def optional_integer(self, key: str, minimum: int = 1) -> int | None:
        return self.integer(key, 0, minimum) if key in self else None

    def number(self, key: str, default: float, low: float | None = None,
               high: float | None = None) -> float:
        value = self.raw(key, default)
        if not is_number(value):
            raise ValueError(f"{self.task} parameter '{key}' must be a number, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(
                f"{self.task} parameter '{key}' must be within [{low}, {high}], got {value}"
            )
        return float(value)

    def choice(self, key: str, default: Any, allowed: Iterable[Any]) -> Any:
        value = self.raw(key, default)
        options = list(allowed)
        if isinstance(value, str):
            value = value.lower()
        if value not in options:
            raise ValueError(
                f"{self.task} parameter '{key}' must be one of {options}, got {value!r}"
            )
        return value

    def warn_unknown(self, known: Iterable[str]) -> None:
        """Unknown keys are tolerated (manifests carry extra metadata) but never silently."""
        unknown = sorted(set(self._values) - set(known))
        if unknown:
            log.warning("ignoring unknown %s parameters: %s", self.task, ", ".join(unknown))
