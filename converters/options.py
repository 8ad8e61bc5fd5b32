"""What one ``edge-convert convert`` call was asked to do (SPEC §5 and §8)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Log = Callable[[str], None]


@dataclass
class ConvertOptions:
    model: Path
    profiles: list[str]
    calibration: Path
    out: Path
    validation: Path | None = None
    labels: Path | None = None
    name: str | None = None
    version: str = "1"
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    color: str | None = None
    resize: str = "stretch"
    task: str | None = None
    max_accuracy_drop: float = 1.0
    samples: int = 300
    allow_poor_calibration: bool = False
    recover: str = "auto"
    golden: bool = True           # write golden.npz for the daemon's self-test
    debug_samples: int = 32
    # Optimization beyond post-training quantization (SPEC §8).
    train: Path | None = None
    epochs: int | None = None
    prune: float | None = None
    # Zeros in runs of this many neighbouring input weights (the order TFLite stores them):
    # gzip packs runs far better than scattered zeros (digits, 50%: ×0.64 against ×0.72).
    prune_block: int = 4
    qat: bool = False
    # The float model accuracy, agreement and the gate are measured against: the model itself
    # unless a sweep converts a student of it.
    reference: Path | None = None

    @property
    def reference_model(self) -> Path:
        return self.reference or self.model
