"""The daemon end to end against a bare interpreter loop, on a MobileNetV2 int8 bundle and a video.

Measured side by side in each round, with the same interpreter thread count:

* bare loop: ``ai_edge_litert`` Interpreter, set_tensor + invoke + get_tensor on one
  preprocessed frame → invokes/s and CPU per invoke; run right before and right after the
  daemon, and the ratio is taken to their mean (how much the two differ shows how steady the
  machine was);
* model loop: decode a video frame + ``LoadedModel.run`` (preprocess, invoke, post-process) in
  one thread, the daemon's per-frame code without its threads and delivery → frames/s;
* the daemon: ``edge-runtime run --source video.mp4 --max-frames N`` as a child process against
  a throw-away Mosquitto → seconds from process start to the first result at a subscriber,
  steady results/s at the subscriber, CPU per result, peak RSS (VmHWM) of the daemon;
* the daemon paced like a camera (``--fps``) → capture-to-broker latency beyond the invoke itself
  (arrival at the subscriber - ``frame.captured_at`` - ``timing_ms.inference``), p50 / p99.

Once per run, the peak RSS of a child that imports TensorFlow and runs ``tf.lite.Interpreter`` on
the same model, for comparison (skipped without TensorFlow, or with ``--no-tensorflow``).
Figures are medians over the rounds. Other work on the machine skews them: the run says how much
CPU other processes took meanwhile.

The model, calibration frames, bundle and video are made once under ``.cache/bench/daemon/``
(the model has random weights: accuracy means nothing here, only speed and memory do).

    python benchmarks/daemon.py [--frames 300] [--threads 2] [--rounds 5] [--fps 25]
                                [--latency-frames 150] [--no-tensorflow] [--rebuild]
                                [--cold-cache] [--json PATH]

``--cold-cache`` (root) empties the page cache before each daemon run, as after a reboot: shared
libraries installed moments ago sit in the cache in large folios on recent kernels, and mapping
them then counts much more of each library as resident.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as paho
from common import mosquitto
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench" / "daemon"
MODEL_NAME = "mobilenet_v2"
PROFILE = "rpi4"
INPUT_SIZE = 224
CALIBRATION_FRAMES = 100
VIDEO_FRAMES = 300
VIDEO_SIZE = (640, 480)
VIDEO_FPS = 30.0
RUN_TIMEOUT_S = 180.0
POLL_S = 0.01
WARMUP_INVOKES = 10
BUSY_WARNING = 0.05
SHARE_NAMES = {"others": "other processes", "steal": "the hypervisor (steal time)"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

MAKE_KERAS = """
import sys
import keras
model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000)
model.save(sys.argv[1])
"""

TF_EQUIVALENT = """
import sys
import numpy as np
import tensorflow as tf
interpreter = tf.lite.Interpreter(model_path=sys.argv[1], num_threads=int(sys.argv[2]))
interpreter.allocate_tensors()
detail = interpreter.get_input_details()[0]
tensor = np.zeros(detail["shape"], detail["dtype"])
for _ in range(int(sys.argv[3])):
    interpreter.set_tensor(detail["index"], tensor)
    interpreter.invoke()
    for out in interpreter.get_output_details():
        interpreter.get_tensor(out["index"])
"""


# ----- assets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assets:
    bundle: Path
    video: Path
    calibration: Path

    @property
    def model(self) -> Path:
        return self.bundle / "model.tflite"


def prepare_assets(cache: Path, rebuild: bool) -> Assets:
    """Everything the runs need, made once and reused from ``cache``."""
    if rebuild and cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    calibration = cache / "calibration"
    if not calibration.is_dir():
        _write_atomically_dir(calibration, lambda d: write_calibration(d, sample_images()))
    video = cache / "video.mp4"
    if not video.is_file():
        _write_atomically_file(video, lambda p: write_video(p, sample_images()))
    keras_model = cache / f"{MODEL_NAME}.keras"
    if not keras_model.is_file():
        _write_atomically_file(keras_model, make_keras_model)
    bundle = _find_bundle(cache / "bundles")
    if bundle is None:
        bundle = convert(keras_model, calibration, cache / "bundles")
    return Assets(bundle, video, calibration)


@functools.cache
def sample_images() -> list[np.ndarray]:
    """scikit-learn's two photos, as OpenCV BGR images."""
    from sklearn.datasets import load_sample_images

    return [cv2.cvtColor(img, cv2.COLOR_RGB2BGR) for img in load_sample_images().images]


def _write_atomically_dir(target: Path, write: Callable[[Path], None]) -> None:
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write(partial)
    partial.rename(target)


def _write_atomically_file(target: Path, write: Callable[[Path], None]) -> None:
    partial = target.with_name(f"partial-{target.name}")
    partial.unlink(missing_ok=True)
    write(partial)
    partial.rename(target)


def write_calibration(folder: Path, images: list[np.ndarray]) -> None:
    """Crops at random places and scales, some mirrored, some darker or brighter."""
    rng = np.random.default_rng(0)
    for index in range(CALIBRATION_FRAMES):
        image = images[index % len(images)]
        h, w = image.shape[:2]
        side = int(rng.integers(h // 2, h + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = cv2.resize(image[y:y + side, x:x + side], (INPUT_SIZE, INPUT_SIZE))
        if index % 4 in (1, 3):
            crop = crop[:, ::-1]
        gain = float(rng.uniform(0.7, 1.3))
        crop = np.clip(crop.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"frame_{index:03d}.png"), crop)


def write_video(path: Path, images: list[np.ndarray]) -> None:
    """A 640x480 clip panning slowly across each photo in turn."""
    width, height = VIDEO_SIZE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), VIDEO_FPS, VIDEO_SIZE)
    if not writer.isOpened():
        raise SystemExit("OpenCV cannot write mp4v video here")
    per_image = VIDEO_FRAMES // len(images)
    try:
        for image in images:
            big = cv2.resize(image, None, fx=1.7, fy=1.7)
            span_x, span_y = big.shape[1] - width, big.shape[0] - height
            for step in range(per_image):
                t = step / max(1, per_image - 1)
                x, y = int(span_x * t), int(span_y * (0.5 - 0.5 * np.cos(np.pi * t)))
                writer.write(np.ascontiguousarray(big[y:y + height, x:x + width]))
    finally:
        writer.release()


def make_keras_model(path: Path) -> None:
    # In a child: TensorFlow takes ~600 MB and must not sit in the process measuring the daemon.
    subprocess.run([sys.executable, "-c", MAKE_KERAS, str(path)], check=True,
                   env=_quiet_tensorflow_env())


def convert(model: Path, calibration: Path, out: Path) -> Path:
    """The real ``edge-convert convert`` CLI; the accuracy gate is opened wide (random weights)."""
    command = [
        _tool("edge-convert"), "convert", str(model), "--profile", PROFILE,
        "--calibration", str(calibration), "--input-mean", "127.5", "--input-std", "127.5",
        "--task", "classification", "--max-accuracy-drop", "100", "--out", str(out),
    ]
    print(f"converting {model.name} for {PROFILE} (once; cached in {out})", file=sys.stderr)
    subprocess.run(command, check=True, env=_quiet_tensorflow_env())
    bundle = _find_bundle(out)
    if bundle is None:
        raise SystemExit(f"edge-convert wrote no bundle under {out}")
    return bundle


def _find_bundle(folder: Path) -> Path | None:
    for manifest in sorted(folder.glob("*/manifest.json")):
        if (manifest.parent / "model.tflite").is_file():
            return manifest.parent
    return None


def _quiet_tensorflow_env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed (pip install -e . in this environment)")
    return found


# ----- measuring child processes -------------------------------------------------------------


@dataclass
class ChildRun:
    """A finished child process: when it started (wall clock), its exit code and peak RSS."""

    started: float
    exit_code: int
    peak_rss_bytes: int
    seconds: float
    cpu_seconds: float
    cpu_samples: list[tuple[float, float]] = field(default_factory=list)  # (wall, CPU seconds)
    peak_anon_bytes: int = 0  # largest RssAnon sampled: heaps, not shared library pages

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds the child used between two wall-clock times (from the samples)."""
        if len(self.cpu_samples) < 2:
            return float("nan")
        walls, cpus = zip(*self.cpu_samples, strict=True)
        return float(np.interp(end, walls, cpus) - np.interp(start, walls, cpus))


def run_monitored(command: Sequence[str], timeout: float = RUN_TIMEOUT_S,
                  env: dict[str, str] | None = None, quiet: bool = False) -> ChildRun:
    """Run ``command`` to its end, sampling its peak RSS (VmHWM) and CPU time as it goes."""
    started = time.time()
    clock = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL if quiet else None)
    high_water = anon = 0
    samples: list[tuple[float, float]] = []
    deadline = clock + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        hwm, rss_anon = _memory(process.pid)
        high_water, anon = max(high_water, hwm), max(anon, rss_anon)
        cpu = _cpu_s(process.pid)
        if cpu is not None:
            samples.append((time.time(), cpu))
        if time.perf_counter() > deadline:
            process.kill()
            process.wait()
            raise SystemExit(f"{Path(command[0]).name} did not finish within {timeout:.0f} s")
        time.sleep(POLL_S)
    process.returncode = os.waitstatus_to_exitcode(status)
    # Not usage.ru_maxrss: a child forked from this process inherits this process's RSS as its
    # high-water mark until it execs, so it would report the benchmark's memory, not its own.
    return ChildRun(started, process.returncode, high_water, time.perf_counter() - clock,
                    usage.ru_utime + usage.ru_stime, samples, anon)


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process, all threads (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def _memory(pid: int) -> tuple[int, int]:
    """Peak resident bytes (VmHWM) and anonymous resident bytes (RssAnon) of a live process;
    zeros once it is gone."""
    found = {"VmHWM:": 0, "RssAnon:": 0}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key = line.split(maxsplit=1)[0] if line.strip() else ""
                if key in found:
                    found[key] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return found["VmHWM:"], found["RssAnon:"]


class CpuShare:
    """How much of the machine's CPU went elsewhere meanwhile: to processes outside this
    benchmark, and to the hypervisor (steal time, on a virtual machine).

    Other work on a 2-core machine skews every figure here; this says when it happened.
    """

    def __init__(self) -> None:
        self._start = (time.perf_counter(), _machine_ticks(), _own_cpu_s())

    def shares(self) -> dict[str, float]:
        """Fractions of all cores (0..1) since construction: ``others`` and ``steal``."""
        wall0, (busy0, steal0), own0 = self._start
        busy, steal = _machine_ticks()
        capacity = (time.perf_counter() - wall0) * (os.cpu_count() or 1)
        foreign = (busy - busy0) - (_own_cpu_s() - own0)
        return {"others": max(0.0, foreign / capacity), "steal": (steal - steal0) / capacity}


def _machine_ticks() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(v) for v in stat.readline().split()[1:9])
    busy = user + nice + system + irq + softirq
    return busy / CLOCK_TICKS, steal / CLOCK_TICKS


def _own_cpu_s() -> float:
    """CPU of this process and of every child it has reaped (the daemons, Mosquitto)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


# ----- the broker side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    at: float
    payload: dict[str, Any]


class Arrivals:
    """A subscriber that notes when each message reached it, per topic."""

    def __init__(self, host: str, port: int) -> None:
        self._lock = threading.Lock()
        self._by_topic: dict[str, list[Arrival]] = {}
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"bench-daemon-{uuid.uuid4().hex[:6]}")
        self.client.on_connect = lambda c, *_: c.subscribe("edge/#", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise SystemExit("the benchmark subscriber could not subscribe")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        at = time.time()
        if message.retain:
            return
        with self._lock:
            self._by_topic.setdefault(message.topic, []).append(
                Arrival(at, json.loads(message.payload)))

    def take(self, topic: str, count: int = 0, timeout: float = 5.0) -> list[Arrival]:
        """What arrived on ``topic``, waiting up to ``timeout`` for at least ``count``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                got = list(self._by_topic.get(topic, []))
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(POLL_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ----- the measurements -----------------------------------------------------------------------


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


@dataclass
class DaemonRun:
    child: ChildRun
    results: list[Arrival]
    metrics: dict[str, Any] | None = field(default=None)

    @property
    def first_result_s(self) -> float:
        return self.results[0].at - self.child.started

    def steady_part(self) -> list[Arrival]:
        """The results after the first tenth (warm-up: first invokes, connection, caches)."""
        ordered = sorted(self.results, key=lambda a: a.at)
        return ordered[max(5, len(ordered) // 10):]

    def steady(self) -> LoopRate:
        """Results per second at the broker and daemon CPU per result, in the steady part."""
        times = [a.at for a in self.steady_part()]
        if len(times) < 2 or times[-1] <= times[0]:
            return LoopRate(float("nan"), float("nan"))
        count = len(times) - 1
        cpu = self.child.cpu_between(times[0], times[-1])
        return LoopRate(count / (times[-1] - times[0]), cpu / count * 1e3)

    def overhead_ms(self) -> list[float]:
        """Per steady result: capture → arrival at the subscriber, less the invoke itself."""
        return [(a.at - a.payload["frame"]["captured_at"]) * 1e3
                - a.payload["timing_ms"]["inference"] for a in self.steady_part()]


def drop_page_cache() -> None:
    """Empty the kernel's page cache (root only), so that the next process reads its libraries
    from disk as on a freshly booted board. Files written recently (a fresh ``pip install``) sit
    in the cache in large folios, and a process mapping them counts far more of each library as
    resident than one that reads it cold."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        raise SystemExit(f"--cold-cache needs root: {exc}") from None


def run_daemon(assets: Assets, broker: tuple[str, int], arrivals: Arrivals, *, frames: int,
               threads: int, fps: float | None = None, cold: bool = False) -> DaemonRun:
    device = f"bench-{uuid.uuid4().hex[:6]}"
    host, port = broker
    with tempfile.TemporaryDirectory() as state:
        command = [
            _tool("edge-runtime"), "run", "--bundle", str(assets.bundle),
            "--source", str(assets.video), "--max-frames", str(frames),
            "--threads", str(threads), "--mqtt", f"mqtt://{host}:{port}",
            "--device-id", device, "--state-dir", state,
        ]
        if fps is not None:
            command += ["--fps", f"{fps:g}"]
        if frames > VIDEO_FRAMES:
            command.append("--loop")
        if cold:
            drop_page_cache()
        child = run_monitored(command)
    if child.exit_code != 0:
        raise SystemExit(f"edge-runtime exited with {child.exit_code}")
    results = arrivals.take(f"edge/{device}/default/result", frames)
    if len(results) < frames:
        raise SystemExit(f"only {len(results)} of {frames} results reached the broker")
    final = arrivals.take(f"edge/{device}/metrics", 1, timeout=2.0)
    return DaemonRun(child, results, final[-1].payload if final else None)


def tensorflow_rss(model: Path, threads: int, invokes: int = 50) -> int | None:
    """Peak RSS of the same work done through TensorFlow's own tf.lite.Interpreter."""
    if importlib.util.find_spec("tensorflow") is None:
        return None
    child = run_monitored([sys.executable, "-c", TF_EQUIVALENT, str(model), str(threads),
                           str(invokes)], env=_quiet_tensorflow_env(), quiet=True)
    return child.peak_rss_bytes if child.exit_code == 0 else None


# ----- the report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    key: str
    figure: str
    limit: float
    at_most: bool
    digits: int

    def met(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit

    @property
    def text(self) -> str:
        return f"{'≤' if self.at_most else '≥'} {self.limit:.{self.digits}f}"


GOALS = (
    Goal("peak_rss_mb", "peak RSS of the daemon (MB)", 120.0, True, 0),
    Goal("first_result_s", "process start → first result at the broker (s)", 1.5, True, 2),
    Goal("throughput_ratio", "results/s: daemon ÷ bare invoke loop", 0.9, False, 2),
    Goal("overhead_p50_ms", "capture → broker beyond the invoke, p50 (ms)", 2.0, True, 2),
)
INFO_ROWS = (
    ("bare_invokes_per_s", "bare invoke loop (invokes/s)", 1),
    ("model_loop_per_s", "decode + LoadedModel.run loop, one thread (frames/s)", 1),
    ("daemon_results_per_s", "daemon at the broker (results/s)", 1),
    ("bare_drift_pct", "bare loop before vs after the daemon, difference (%)", 0),
    ("bare_cpu_ms", "bare loop CPU per invoke, all threads (ms)", 2),
    ("model_loop_cpu_ms", "decode + LoadedModel.run CPU per frame (ms)", 2),
    ("daemon_cpu_ms", "daemon CPU per result, all threads (ms)", 2),
    ("overhead_p99_ms", "capture → broker beyond the invoke, p99 (ms)", 2),
    ("peak_anon_rss_mb", "of which anonymous at most (MB; the rest is library pages)", 0),
    ("tensorflow_peak_rss_mb", "tf.lite.Interpreter with TensorFlow, peak RSS (MB)", 0),
)


def measure(args: argparse.Namespace, assets: Assets) -> dict[str, Any]:
    tensor = input_tensor(assets)
    cpu = CpuShare()
    rounds: list[dict[str, Any]] = []
    with mosquitto() as broker:
        arrivals = Arrivals(*broker)
        try:
            for number in range(1, args.rounds + 1):
                rounds.append(measure_round(args, assets, tensor, broker, arrivals))
                print(f"round {number}: {_describe_round(rounds[-1]['figures'])}",
                      file=sys.stderr)
        finally:
            arrivals.close()
    figures = {key: statistics.median(r["figures"][key] for r in rounds)
               for key in rounds[0]["figures"]}
    if args.tensorflow:
        if args.cold_cache:
            drop_page_cache()
        rss = tensorflow_rss(assets.model, args.threads)
        if rss is not None:
            figures["tensorflow_peak_rss_mb"] = rss / 2**20
    return {"figures": figures, "rounds": rounds, "cpu_elsewhere": cpu.shares()}


def measure_round(args: argparse.Namespace, assets: Assets, tensor: np.ndarray,
                  broker: tuple[str, int], arrivals: Arrivals) -> dict[str, Any]:
    # The bare loop runs right before and right after the daemon, and the ratio takes their
    # mean: on a shared host the speed of the machine drifts within seconds.
    before = bare_loop(assets.model, tensor, args.threads, args.frames)
    run = run_daemon(assets, broker, arrivals, frames=args.frames, threads=args.threads,
                     cold=args.cold_cache)
    after = bare_loop(assets.model, tensor, args.threads, args.frames)
    bare = LoopRate((before.per_s + after.per_s) / 2, (before.cpu_ms + after.cpu_ms) / 2)
    daemon = run.steady()
    in_process = model_loop(assets, args.threads, args.frames)
    paced = run_daemon(assets, broker, arrivals, frames=args.latency_frames,
                       threads=args.threads, fps=args.fps, cold=args.cold_cache)
    overhead = paced.overhead_ms()
    figures = {"bare_invokes_per_s": bare.per_s, "daemon_results_per_s": daemon.per_s,
               "throughput_ratio": daemon.per_s / bare.per_s,
               "bare_drift_pct": abs(before.per_s - after.per_s) / bare.per_s * 100,
               "first_result_s": run.first_result_s,
               "peak_rss_mb": max(run.child.peak_rss_bytes, paced.child.peak_rss_bytes) / 2**20,
               "peak_anon_rss_mb": max(run.child.peak_anon_bytes,
                                       paced.child.peak_anon_bytes) / 2**20,
               "model_loop_per_s": in_process.per_s,
               "bare_cpu_ms": bare.cpu_ms, "model_loop_cpu_ms": in_process.cpu_ms,
               "daemon_cpu_ms": daemon.cpu_ms,
               "overhead_p50_ms": float(np.percentile(overhead, 50)),
               "overhead_p99_ms": float(np.percentile(overhead, 99))}
    return {"figures": figures, "stages_p50_ms": stage_latencies(run.metrics),
            "paced_stages_p50_ms": stage_latencies(paced.metrics)}


def _describe_round(r: dict[str, float]) -> str:
    return (f"bare {r['bare_invokes_per_s']:.1f}/s, daemon {r['daemon_results_per_s']:.1f}/s "
            f"({r['throughput_ratio']:.2f}; bare before/after differ by {r['bare_drift_pct']:.0f}%), "
            f"first result {r['first_result_s']:.2f} s, "
            f"RSS {r['peak_rss_mb']:.0f} MB, beyond invoke p50 {r['overhead_p50_ms']:.2f} ms")


def stage_latencies(metrics: dict[str, Any] | None) -> dict[str, float]:
    """p50 per stage from the daemon's final metrics message, as the daemon saw them."""
    if not metrics:
        return {}
    pipeline = metrics.get("pipelines", {}).get("default", {})
    latency = pipeline.get("latency_ms", {})
    return {stage: values["p50"] for stage, values in latency.items()
            if isinstance(values, dict) and values.get("p50") is not None}


def verdicts(figures: dict[str, float]) -> list[dict[str, Any]]:
    return [{"figure": g.figure, "key": g.key, "measured": figures[g.key], "goal": g.text,
             "met": g.met(figures[g.key])} for g in GOALS]


def print_table(report: dict[str, Any]) -> None:
    figures = report["figures"]
    rows = [(v["figure"], _fmt(v["measured"], g.digits), v["goal"], "yes" if v["met"] else "NO")
            for v, g in zip(report["goals"], GOALS, strict=True)]
    rows += [(label, _fmt(figures[key], digits), "", "")
             for key, label, digits in INFO_ROWS if key in figures]
    header = ("figure", "measured", "goal", "met?")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(4)]
    print(f"{report['machine']}; {report['threads']} thread(s), {report['frames']} frames, "
          f"latency at {report['fps']:g} fps; median of {len(report['rounds'])} round(s)")
    for what, share in report["cpu_elsewhere"].items():
        if share > BUSY_WARNING:
            print(f"warning: {SHARE_NAMES[what]} took {share:.0%} of the CPU during the run; "
                  "the figures are skewed")
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=VIDEO_FRAMES,
                        help="invokes of the bare loop and results of each daemon run")
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads, both sides")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of bare loop, model loop, daemon and paced daemon")
    parser.add_argument("--fps", type=float, default=25.0, help="pace of the latency runs")
    parser.add_argument("--latency-frames", type=int, default=150,
                        help="results of each paced (latency) run")
    parser.add_argument("--no-tensorflow", dest="tensorflow", action="store_false",
                        help="skip the TensorFlow comparison")
    parser.add_argument("--rebuild", action="store_true", help="remake the cached assets")
    parser.add_argument("--cold-cache", action="store_true",
                        help="empty the page cache before each daemon and TensorFlow run, as "
                             "after a reboot (root only)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    if min(args.rounds, args.threads) < 1 or args.fps <= 0:
        parser.error("--rounds, --threads and --fps must be positive")
    if min(args.frames, args.latency_frames) < 20:
        parser.error("--frames and --latency-frames must be at least 20 (the start is warm-up)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from edge_runtime.system.sysinfo import machine_description

    args = parse_args(argv)
    assets = prepare_assets(CACHE, args.rebuild)
    report = measure(args, assets)
    report.update(machine=machine_description(), threads=args.threads, frames=args.frames,
                  fps=args.fps, latency_frames=args.latency_frames,
                  bundle=str(assets.bundle), video=str(assets.video))
    report["goals"] = verdicts(report["figures"])
    print_table(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
