"""Preprocessing as a stage of the frame path: frame in, model input out, owned by the pipeline.

The pipeline decides where the stage runs: for files and folders on the capture thread, so that
the next frame's resize and quantization overlap this one's inference (every frame is served,
none of that work is wasted); for live sources on the pipeline thread, straight into the
interpreter's input tensor (a frame may be dropped, so nothing is done ahead). A model swap
retargets the stage; inputs made for an older model are recognised by their generation and made
again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from edge_runtime.frames import Frame
from edge_runtime.preprocess import InputSpec, Letterbox, Preprocessor


@dataclass(slots=True)
class ModelInput:
    """A frame turned into a model's input tensor ahead of inference."""

    tensor: np.ndarray
    letterbox: Letterbox | None
    ms: float
    generation: int


class PreprocessStage:
    """Makes ``frame.input`` for the model the pipeline serves. One thread calls it at a time."""

    def __init__(self, spec: InputSpec) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._spec = spec
        self._pre: Preprocessor | None = None

    @property
    def generation(self) -> int:
        return self._generation

    def retarget(self, spec: InputSpec) -> int:
        """From now on make inputs for ``spec``; return the new generation."""
        with self._lock:
            self._generation += 1
            self._spec, self._pre = spec, None
            return self._generation

    def __call__(self, frame: Frame) -> None:
        """Preprocess ``frame`` into ``frame.input``; ValueError for a frame that cannot be used."""
        with self._lock:
            generation, spec, pre = self._generation, self._spec, self._pre
            if pre is None:
                pre = self._pre = Preprocessor(spec)
        start = time.perf_counter()
        tensor = np.empty(spec.shape, pre.dtype)
        pre(frame.data, out=tensor)
        letterbox = pre.last_letterbox if spec.is_image else None
        frame.input = ModelInput(tensor, letterbox, (time.perf_counter() - start) * 1e3, generation)
