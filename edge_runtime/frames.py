"""The unit of work that travels from a source to a result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edge_runtime.stages import ModelInput


@dataclass(slots=True)
class Frame:
    """One input item: an image (HxWx3 BGR or HxW gray, uint8) or a sensor window (T x C float32).

    ``ref`` is what a subscriber sees as ``frame.ref``: the image path relative to the source
    folder, or the frame index as a string. ``label`` is the ground truth when the source knows it
    (class sub-folder of an image folder), used only for local accuracy summaries.
    """

    index: int
    ref: str
    captured_at: float
    data: np.ndarray
    label: str | None = None
    meta: dict[str, object] = field(default_factory=dict)
    # The model input made from ``data`` ahead of inference (``PreprocessStage``), if any.
    input: ModelInput | None = None
