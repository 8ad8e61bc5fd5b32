"""In-process loops the daemon is measured against: a bare interpreter and the daemon's own
per-frame code without its threads and delivery."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from assets import Assets

WARMUP_INVOKES = 10


def input_tensor(assets: Assets) -> np.ndarray:
    """The first video frame, preprocessed exactly as the daemon does it."""
    from edge_runtime.bundles.manifest import load_bundle_dir
    from edge_runtime.preprocess import Preprocessor

    capture = cv2.VideoCapture(str(assets.video))
    ok, frame = capture.read()
    capture.release()
    if not ok:
        raise SystemExit(f"cannot read {assets.video}")
    spec = load_bundle_dir(assets.bundle).input_spec
    assert spec is not None
    return Preprocessor(spec)(frame)


@dataclass(frozen=True)
class LoopRate:
    per_s: float
    cpu_ms: float  # CPU of the whole process per item, all threads


def bare_loop(model: Path, tensor: np.ndarray, threads: int, invokes: int) -> LoopRate:
    """Invokes per second of a plain interpreter: set_tensor + invoke + get_tensor."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model), num_threads=threads)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    outputs = [d["index"] for d in interpreter.get_output_details()]
    start = cpu = 0.0
    for i in range(WARMUP_INVOKES + invokes):
        if i == WARMUP_INVOKES:
            start, cpu = time.perf_counter(), time.process_time()
        interpreter.set_tensor(index, tensor)
        interpreter.invoke()
        for out in outputs:
            interpreter.get_tensor(out)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return LoopRate(invokes / seconds, cpu / invokes * 1e3)


def model_loop(assets: Assets, threads: int, frames: int) -> LoopRate:
    """The daemon's own per-frame code in one thread, without capture thread or delivery:
    decode a video frame, then ``LoadedModel.run`` (preprocess, invoke, post-process)."""
    from edge_runtime.model import open_model

    model = open_model(assets.bundle, threads=threads)
    capture = cv2.VideoCapture(str(assets.video))
    start = cpu = 0.0
    try:
        for i in range(WARMUP_INVOKES + frames):
            if i == WARMUP_INVOKES:
                start, cpu = time.perf_counter(), time.process_time()
            ok, frame = capture.read()
            if not ok:
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = capture.read()
            model.run(frame)
    finally:
        capture.release()
        model.close()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return LoopRate(frames / seconds, cpu / frames * 1e3)
