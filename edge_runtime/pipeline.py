"""One pipeline: a source → preprocess → backend → postprocess → outbox, on its own threads.

A frame travels forward once: capture → preprocess → invoke → post-process → outbox → link. The
capture thread holds at most one frame for live sources (newest wins) and hands frames over one by
one for files. The pipeline owns the preprocessing stage and schedules it: on the capture thread
for files (the next frame's resize and quantization overlap this one's inference), on the
inference thread for live sources. The inference thread below is the only owner of the
interpreter. A model swap (``reload``, ``rollback``) replaces the :class:`LoadedModel` between two
frames and retargets the stage.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_runtime.publish.policy import PolicySettings, PublishPolicy

from .backends import BackendError
from .config import PipelineConfig
from .frames import Frame
from .metrics import PipelineMetrics
from .model import LoadedModel, Timings
from .monitor.watcher import Watcher
from .postprocess import Outcome
from .publish.outbox import Outbox
from .publish.payloads import FrameInfo, ModelInfo, ResultMessage, Timing
from .redact import redact
from .sources import SourceOptions, WindowSpec, open_source
from .sources.capture import Capture
from .stages import PreprocessStage
from .tuning import Layout, ThreadTuner, tuner_for

log = logging.getLogger(__name__)
GET_TIMEOUT_S = 0.25
STORE_RETRY_S = 0.5   # pause after a failed outbox write, so a full disk is not spun on

StateCallback = Callable[[str, str, str], None]   # (pipeline, state, reason)


class Pipeline:
    def __init__(self, config: PipelineConfig, model: LoadedModel | None, *, device: str,
                 result_topic: str, outbox: Outbox, wake: Callable[[], None],
                 metrics: PipelineMetrics, on_state: StateCallback | None = None,
                 watcher: Watcher | None = None) -> None:
        self.config = config
        self.name = config.name
        self.device = device
        self.topic = result_topic
        self._outbox = outbox
        self._wake = wake
        self.metrics = metrics
        self._on_state = on_state
        self._model: LoadedModel | None = None
        self.watcher = watcher or Watcher(None, lambda _kind, _report: None)
        self.previous: LoadedModel | None = None
        self._swap_lock = threading.Lock()
        self.policy = PublishPolicy(_policy_settings(config))
        self._paused = threading.Event()
        self._stop = threading.Event()
        self.done = threading.Event()
        self.results = 0
        self.last_beat = time.monotonic()
        self.source_state = "ok"
        self.source_reason = ""
        self._store_failing = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.preprocess: PreprocessStage | None = None
        self.capture: Capture | None = None
        self._tuner: ThreadTuner | None = None
        self._retune = False
        if model is not None:
            self._attach(model)
        else:
            self.metrics.set_info("state", "waiting")

    def _attach(self, model: LoadedModel) -> None:
        """Serve the first model: the source is opened for it (its input guides decoding)."""
        self.preprocess = PreprocessStage(model.spec)
        source = open_source(self.config.source, self._source_options(model))
        self.capture = Capture(source, on_state=self._source_state,
                               ahead=None if source.live else self.preprocess)
        self._tuner = tuner_for(self.config.threads, model, live=source.live)
        self._retune = self._tuner is not None
        self._model = model
        self.watcher.serve(model, swapped=False)
        self.metrics.set_info("state", "serving")
        self._describe_model(model)
        self._ready.set()

    # ----- control ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"pipeline-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop capture; the frame in flight finishes and is published."""
        self._stop.set()
        if self.capture is not None:
            self.capture.stop()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    @property
    def model(self) -> LoadedModel | None:
        """The model served; None while the pipeline waits for its first one."""
        return self._model

    @property
    def waiting(self) -> bool:
        return self._model is None

    def swap_model(self, new: LoadedModel) -> LoadedModel | None:
        """Serve ``new`` from the next frame on; return the model it replaced (None: the first
        model of a waiting pipeline, whose source opens now)."""
        with self._swap_lock:
            old = self._model
            if old is None or self.preprocess is None:
                self._attach(new)
                return None
            self._model = new
            self.previous = old
            self.preprocess.retarget(new.spec)
            self._retune = self._tuner is not None
        self.policy.reset()
        self.watcher.serve(new, swapped=True)
        self._describe_model(new)
        return old

    # ----- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if not self._await_model():
                return
            assert self.capture is not None
            self.capture.start()
            self._loop()
        except Exception:
            log.exception("pipeline %s stopped by an unexpected error", self.name)
            self._state("degraded", "pipeline stopped by an unexpected error")
        finally:
            self.done.set()

    def _await_model(self) -> bool:
        """Wait for the first model (a fresh install); False when stopped first."""
        while not self._ready.is_set():
            self.last_beat = time.monotonic()   # waiting is not hanging
            if self._stop.wait(GET_TIMEOUT_S):
                return False
        return True

    def _loop(self) -> None:
        assert self.capture is not None
        limit = self.config.max_frames
        while not self._stop.is_set():
            self.last_beat = time.monotonic()
            if self._retune:
                self._retune = False
                self._apply(self._tuner.start(self.last_beat) if self._tuner else None)
            frame = self.capture.get(GET_TIMEOUT_S)
            if frame is None:
                if self.capture.finished:
                    self._finished_source()
                    return
                continue
            self.metrics.frame_captured()
            if self._paused.is_set():
                continue
            if self._process(frame) and limit is not None and self.results >= limit:
                return

    def _finished_source(self) -> None:
        error = getattr(self.capture, "error", None)
        if error:
            self._state("degraded", str(error))
        log.info("pipeline %s: source %s ended after %d results", self.name,
                 redact(self.config.source), self.results)

    def _process(self, frame: Frame) -> bool:
        with self._swap_lock:
            model, stage = self._model, self.preprocess
        assert model is not None and stage is not None
        generation = stage.generation
        ready = frame.input
        if ready is not None and ready.generation != generation:
            ready = None   # made for the model served before a swap
        try:
            outcome, t = model.run(frame.data, ready)
        except ValueError as exc:
            self.metrics.error()
            log.warning("pipeline %s: frame %s skipped: %s", self.name, frame.ref, exc)
            return False
        self.metrics.frame_processed()
        read_ms = frame.meta.get("read_ms")
        if isinstance(read_ms, float):
            self.metrics.record_ms("read", read_ms)
        self._watch(frame, model, outcome, t)
        if self._tuner is not None:
            self._apply(self._tuner.observe(time.monotonic(), invoke_ms=t.inference,
                                            preprocess_ms=t.preprocess,
                                            read_ms=read_ms if isinstance(read_ms, float) else 0))
        outcome = self.policy.filter(outcome)
        now = time.time()
        if not self.policy.should_publish(outcome, now):
            return False
        start = time.perf_counter()
        message = ResultMessage(
            device=self.device, pipeline=self.name, seq=0, ts=round(now, 3),
            model=ModelInfo(model.bundle.name, model.bundle.version, model.bundle.sha256),
            frame=FrameInfo(frame.index, frame.ref, round(frame.captured_at, 3)),
            task=outcome.task, output=outcome.payload,
            timing_ms=Timing(t.preprocess, t.inference, t.postprocess,
                             t.preprocess + t.inference + t.postprocess),
        )
        if not self._store(message):
            return False
        self._wake()
        self.results += 1
        done = time.perf_counter()
        self.metrics.record_ms("preprocess", t.preprocess)
        self.metrics.record_ms("inference", t.inference)
        self.metrics.record_ms("postprocess", t.postprocess)
        self.metrics.record_ms("publish", (done - start) * 1e3)
        self.metrics.record_ms("total", max(0.0, (time.time() - frame.captured_at) * 1e3))
        if frame.label is not None:
            self._score(frame.label, outcome.top_label)
        return True

    def _watch(self, frame: Frame, model: LoadedModel, outcome: Outcome, t: Timings) -> None:
        try:
            self.watcher.observe(frame, model, outcome, t)
        except Exception:   # watching must never stop serving
            self.metrics.counters.inc("watch_errors")
            if self.metrics.counters.get("watch_errors") == 1:
                log.exception("pipeline %s: the monitor failed on a result", self.name)

    def _store(self, message: ResultMessage) -> bool:
        """Put the result in the outbox. When the disk refuses (full, I/O error, locked) the
        result is skipped and counted, status says why, and the pipeline keeps serving."""
        try:
            self._outbox.append(self.name, self.topic, message.build, qos=self.config.publish.qos)
        except sqlite3.Error as exc:
            self.metrics.counters.inc("unstored")
            if not self._store_failing:
                self._store_failing = True
                log.error("pipeline %s: results cannot be stored, skipping them: outbox: %s",
                          self.name, exc)
                self._state("degraded", f"results cannot be stored: outbox: {exc}")
            self._stop.wait(STORE_RETRY_S)
            return False
        if self._store_failing:
            self._store_failing = False
            log.info("pipeline %s: results are stored again", self.name)
            self._state(self.source_state, self.source_reason)
        return True

    def _score(self, truth: str, predicted: str | None) -> None:
        self.metrics.counters.inc("labelled")
        if truth == predicted:
            self.metrics.counters.inc("correct")

    # ----- threads by measurement ---------------------------------------------------------------

    def _apply(self, layout: Layout | None) -> None:
        """Serve the next frames with ``layout`` (between two frames, on the pipeline thread)."""
        if layout is not None and self.capture is not None and self._model is not None:
            self.capture.set_ahead(self.preprocess if layout.ahead else None)
            with self._swap_lock:
                try:
                    self._model.rethread(layout.threads)
                except BackendError as exc:
                    log.warning("pipeline %s: cannot use %d interpreter threads: %s", self.name,
                                layout.threads, exc)
        self.metrics.set_info("threads", self.threads_status())

    def decode_status(self) -> dict[str, object]:
        """How the source decodes frames: the decoder, the JPEG scale, why hardware is not used."""
        return dict(self.capture.source.decoding) if self.capture is not None else {}

    @property
    def described(self) -> tuple[object, ...]:
        """Changes whenever what status says about the threads or the decoding changes."""
        rounds = self._tuner.rounds if self._tuner is not None else 0
        shadow = self.watcher.shadow
        return (rounds, tuple(sorted(self.decode_status().items())), self._model is None,
                self.watcher.verdict, shadow.candidate.bundle.sha256 if shadow else None)

    def threads_status(self) -> dict[str, Any]:
        """What the pipeline runs with and why, for status and metrics."""
        model = self._model
        if model is None or self.capture is None:
            return {}
        if self._tuner is not None:
            report = self._tuner.report()
            if self._tuner.measuring or self._tuner.chosen is None:
                report["threads"] = model.backend.threads
            return report
        why = ("set in the config" if isinstance(self.config.threads, int)
               else f"the {model.backend.delegate} delegate runs the model")
        return {"mode": "fixed", "threads": model.backend.threads, "reason": why,
                "preprocess": "inline" if self.capture.source.live else "capture thread"}

    # ----- helpers ----------------------------------------------------------------------------

    def _source_options(self, model: LoadedModel) -> SourceOptions:
        c = self.config
        window = None
        if not model.spec.is_image:
            window = _window_for(c, model)
        spec = model.spec
        hw = model.bundle.profile.get("video_decoder")
        return SourceOptions(fps=c.fps, loop=c.loop, width=c.width, height=c.height,
                             window=window, base_dir=c.base_dir,
                             target=(spec.width, spec.height) if spec.is_image else None,
                             decode=c.decode, hw_decoder=hw if isinstance(hw, str) else None,
                             decode_threads=None if c.decode_threads == "auto"
                             else c.decode_threads)

    def _source_state(self, state: str, reason: str) -> None:
        self.source_state, self.source_reason = state, reason
        self._state(state, reason)

    def _state(self, state: str, reason: str) -> None:
        if self._on_state is not None:
            self._on_state(self.name, state, reason)

    def _describe_model(self, model: LoadedModel) -> None:
        self.metrics.set_info("model", {"name": model.bundle.name,
                                        "version": model.bundle.version,
                                        "sha256": model.bundle.sha256})
        self.metrics.set_info("delegate", model.backend.delegate)
        self.metrics.set_info("cpu_fallback", model.backend.fell_back)
        self.metrics.set_info("threads", self.threads_status())

    def snapshot(self) -> dict[str, Any]:
        snap = self.metrics.snapshot()
        stats = self.capture.stats if self.capture is not None else {}
        frames = dict(snap.get("frames", {}))  # type: ignore[call-overload]
        frames.update(captured=stats.get("captured", 0), dropped=stats.get("dropped", 0),
                      unreadable=stats.get("unreadable", 0) + frames.get("errors", 0),
                      reopens=stats.get("reopens", 0))
        snap["frames"] = frames
        snap["results"] = self.results
        snap["paused"] = self.paused
        snap["source"] = {"state": self.source_state, "reason": self.source_reason}
        snap["decode"] = self.decode_status()
        snap.update(self.watcher.status())
        return snap


def _policy_settings(config: PipelineConfig) -> PolicySettings:
    p = config.publish
    return PolicySettings(mode=p.mode, min_score=p.min_score, trigger_count=p.trigger_count,
                          refractory_s=p.refractory_s, heartbeat_s=p.heartbeat_s)


def _window_for(config: PipelineConfig, model: LoadedModel) -> WindowSpec:
    if config.window is not None:
        w = config.window
        return WindowSpec(size=w.size, stride=w.stride, channels=w.channels)
    sensor = model.bundle.manifest.sensor if model.bundle.manifest else None
    shape = model.spec.shape
    if sensor:
        return WindowSpec(size=int(sensor.get("window", shape[1])),
                          stride=int(sensor.get("stride", 0)),
                          channels=int(sensor.get("channels", 1)))
    channels = int(shape[-1]) if len(shape) == 3 else 1
    size = int(shape[1]) if len(shape) >= 2 else 1
    return WindowSpec(size=size, stride=0, channels=channels)
