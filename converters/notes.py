"""Notes in the summary for what the figures cannot show."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edge_runtime.preprocess import InputSpec, preprocess_batch

from .profiles import Profile
from .verify import ModelRun

if TYPE_CHECKING:
    from .prepare import Prepared

ONE_CLASS_SHARE = 0.9        # a float model giving one class this often is suspect
ONE_CLASS_MIN_SAMPLES = 20
INPUT_OUTSIDE_SHARE = 0.05   # of input values the int8 input range may clip


def input_range_note(prep: Prepared, spec: InputSpec, limit: int = 64) -> str | None:
    """An integer input whose range misses much of the real data: the calibration data did not
    look like it (e.g. dark frames), and keeping layers in float cannot fix the input."""
    if not spec.quantized or len(prep.evaluation) == 0:
        return None
    info = np.iinfo(np.dtype(spec.dtype))
    low = (info.min - spec.zero_point) * spec.scale
    high = (info.max - spec.zero_point) * spec.scale
    sample = prep.evaluation.subset(range(min(limit, len(prep.evaluation))))
    values = preprocess_batch(sample.items, spec.with_quantization("float32", 0.0, 0))
    margin = spec.scale / 2
    outside = float(np.mean((values < low - margin) | (values > high + margin)))
    if outside < INPUT_OUTSIDE_SHARE:
        return None
    return (f"the {spec.dtype} input covers [{low:.3g}, {high:.3g}] but {outside:.0%} of the "
            f"{prep.eval_basis} input values fall outside it (they span [{values.min():.3g}, "
            f"{values.max():.3g}]): calibrate on data like the real inputs")


def one_class_note(prep: Prepared) -> str | None:
    """A classifier that gives one class to nearly every sample agrees with any quantized copy
    of itself and passes the gate: say so, unless the data itself is that lopsided."""
    outputs = prep.float_run.outputs
    if prep.task != "classification" or outputs.ndim != 2 or outputs.shape[1] < 3:
        return None
    if len(outputs) < ONE_CLASS_MIN_SAMPLES:
        return None
    top = outputs.argmax(1)
    index = int(np.bincount(top).argmax())
    share = float(np.mean(top == index))
    labels = prep.evaluation.labels
    if share < ONE_CLASS_SHARE or (labels is not None and np.mean(labels == index) >= share - 0.1):
        return None
    names = prep.class_names or []
    name = names[index] if index < len(names) else str(index)
    return (f"the float model gives {name!r} to {share:.0%} of the {len(top)} {prep.eval_basis} "
            "samples: accuracy and agreement mean little for a model that does not tell classes "
            "apart; check its training and --input-mean/--input-std/--color")


def budget_notes(profile: Profile, run: ModelRun) -> list[str]:
    notes = []
    budget = profile.budgets.max_size_bytes
    if budget and run.size_bytes > budget:
        notes.append(f"model is {run.size_bytes:,} B, over the profile's {budget:,} B size budget")
    return notes

