"""In-process loops the daemon is measured against: a bare interpreter and the daemon's own
per-frame code without its threads and delivery."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from assets import Assets

WARMUP_INVOKES = 10
DAEMON_DECODE_THREADS = 1   # the daemon's default (``decode_threads``)


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


def video_frames(capture: Any, count: int) -> Iterator[np.ndarray]:
    """``count`` frames of a video, from its start again whenever it ends."""
    for _ in range(count):
        ok, frame = capture.read()
        if not ok:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = capture.read()
        yield frame


def model_loop(assets: Assets, threads: int, frames: int) -> LoopRate:
    """The daemon's own per-frame code in one thread, without capture thread or delivery:
    decode a video frame, then ``LoadedModel.run`` (preprocess, invoke, post-process)."""
    from edge_runtime.model import open_model
    from edge_runtime.sources.decoders import open_ffmpeg

    model = open_model(assets.bundle, threads=threads)
    capture = open_ffmpeg(str(assets.video), DAEMON_DECODE_THREADS)
    start = cpu = 0.0
    try:
        for i, frame in enumerate(video_frames(capture, WARMUP_INVOKES + frames)):
            if i == WARMUP_INVOKES:
                start, cpu = time.perf_counter(), time.process_time()
            model.run(frame)
    finally:
        capture.release()
        model.close()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return LoopRate(frames / seconds, cpu / frames * 1e3)


def peer_loop(assets: Assets, threads: int, frames: int, broker: tuple[str, int]) -> LoopRate:
    """A sequential loop as the examples of the usual edge runtimes write it, on one thread:
    read a frame, convert and resize it with OpenCV, quantize it with NumPy, invoke, take the
    top-5, publish the JSON with QoS 1 (paho's network loop on its own thread, as usual)."""
    import json

    import paho.mqtt.client as paho
    from ai_edge_litert.interpreter import Interpreter
    from paho.mqtt.enums import CallbackAPIVersion

    interpreter = Interpreter(model_path=str(assets.model), num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]
    scale, zero_point = detail["quantization"]
    _, height, width, _ = detail["shape"]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"peer-{time.monotonic_ns()}")
    client.connect(*broker)
    client.loop_start()
    capture = cv2.VideoCapture(str(assets.video))
    start = cpu = 0.0
    try:
        for i, frame in enumerate(video_frames(capture, WARMUP_INVOKES + frames)):
            if i == WARMUP_INVOKES:
                start, cpu = time.perf_counter(), time.process_time()
            rgb = cv2.cvtColor(cv2.resize(frame, (width, height)), cv2.COLOR_BGR2RGB)
            x = (rgb.astype(np.float32) - 127.5) / 127.5
            quantized = np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)
            interpreter.set_tensor(detail["index"], quantized[np.newaxis])
            interpreter.invoke()
            scores = interpreter.get_tensor(output["index"])[0]
            top = np.argsort(scores)[::-1][:5]
            client.publish("peer/result", json.dumps(
                {"frame": i, "ts": time.time(),
                 "predictions": [{"index": int(k), "score": float(scores[k])} for k in top]}),
                qos=1)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        capture.release()
        client.loop_stop()
        client.disconnect()
    return LoopRate(frames / seconds, cpu / frames * 1e3)


@dataclass(frozen=True)
class FrameCost:
    """CPU per frame of each step, all threads of this process, measured one step at a time."""

    decode_ms: float
    preprocess_ms: float
    invoke_ms: dict[int, float]  # by interpreter thread count

    def ceiling(self, cores: int) -> float:
        """Results/s if every core did nothing but decode, preprocess and invoke, at the
        cheapest thread count: the CPU's limit for this source and model."""
        return cores / ((self.decode_ms + self.preprocess_ms + min(self.invoke_ms.values()))
                        / 1e3)


def frame_cost(assets: Assets, threads: list[int], frames: int) -> FrameCost:
    """Decode ``frames`` frames, preprocess them as the daemon does, and invoke on them with
    each thread count, timing each step's CPU on its own."""
    from ai_edge_litert.interpreter import Interpreter

    from edge_runtime.bundles.manifest import load_bundle_dir
    from edge_runtime.preprocess import Preprocessor
    from edge_runtime.sources.decoders import open_ffmpeg

    spec = load_bundle_dir(assets.bundle).input_spec
    assert spec is not None
    pre = Preprocessor(spec)
    tensors: list[np.ndarray] = []
    decode_ms, preprocess_ms = float("inf"), 0.0
    # The cheaper of one decoding thread (the daemon's) and FFmpeg's default (a thread per core).
    for capture in (open_ffmpeg(str(assets.video), DAEMON_DECODE_THREADS),
                    cv2.VideoCapture(str(assets.video))):
        tensors = []
        decode_s = preprocess_s = 0.0
        for _ in range(frames):
            t0 = time.process_time()
            ok, frame = capture.read()
            t1 = time.process_time()
            if not ok:
                break
            tensors.append(pre(frame))
            decode_s, preprocess_s = decode_s + t1 - t0, preprocess_s + time.process_time() - t1
        capture.release()
        decode_ms = min(decode_ms, decode_s / max(1, len(tensors)) * 1e3)
        preprocess_ms = preprocess_s / max(1, len(tensors)) * 1e3
    invoke_ms = {}
    for count in threads:
        interpreter = Interpreter(model_path=str(assets.model), num_threads=count)
        interpreter.allocate_tensors()
        index = interpreter.get_input_details()[0]["index"]
        for i, tensor in enumerate([*tensors[:WARMUP_INVOKES], *tensors]):
            if i == WARMUP_INVOKES:
                cpu = time.process_time()
            interpreter.set_tensor(index, tensor)
            interpreter.invoke()
        invoke_ms[count] = (time.process_time() - cpu) / max(1, len(tensors)) * 1e3
    return FrameCost(decode_ms, preprocess_ms, invoke_ms)
