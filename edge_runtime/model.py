"""A model ready to serve: bundle + interpreter + preprocessing + post-processing.

``open_model`` accepts a bundle directory, a packed ``.tar.gz`` (unpacked safely into the state
dir) or a bare ``.tflite`` described by hints. It checks signatures when keys are trusted, and
``LoadedModel.run`` is the per-frame hot path: preprocess straight into the input tensor (or copy
in the input the pipeline's preprocessing stage made ahead), invoke, post-process.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.bundles.manifest import Bundle, BundleError
from edge_runtime.bundles.resolve import Hints, resolve_bundle
from edge_runtime.errors import EdgeError
from edge_runtime.monitor.golden import GoldenMismatch, check_bundle
from edge_runtime.system.sysinfo import cpu_count

from .backends import Backend, BackendError, load_backend
from .postprocess import Outcome, OutputInfo, PostContext, Postprocess, build_postprocessor
from .preprocess import InputSpec, Preprocessor, as_tuple

if TYPE_CHECKING:
    from .config import PipelineConfig
    from .stages import ModelInput

log = logging.getLogger(__name__)
CPU_DELEGATES = frozenset({"xnnpack", "none"})


class ModelError(EdgeError):
    """A model that cannot be served; one line naming the problem."""


@dataclass
class Timings:
    preprocess: float
    inference: float
    postprocess: float


@dataclass
class LoadedModel:
    bundle: Bundle
    backend: Backend
    spec: InputSpec
    pre: Preprocessor
    post: Postprocess
    outputs: list[OutputInfo]
    wants_input: bool = False
    source: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def run(self, data: np.ndarray, ready: ModelInput | None = None) -> tuple[Outcome, Timings]:
        """One frame through the model. ValueError for a frame that cannot be used.

        ``ready`` is the frame already preprocessed for this model (by the pipeline's
        :class:`~edge_runtime.stages.PreprocessStage`); without it the frame is preprocessed
        here, straight into the input tensor.
        """
        t0 = time.perf_counter()
        ahead_ms = 0.0
        if ready is not None:
            self.backend.fill_input(_copy_from(ready.tensor))
            letterbox, ahead_ms = ready.letterbox, ready.ms
        else:
            self.backend.fill_input(self._fill(data))
            letterbox = self.pre.last_letterbox if self.spec.is_image else None
        t1 = time.perf_counter()
        self.backend.invoke()
        t2 = time.perf_counter()
        arrays = self.backend.get_outputs()
        ctx = PostContext(letterbox=letterbox,
                          input_tensor=self._float_input(data) if self.wants_input else None)
        outcome = self.post(arrays, ctx)
        t3 = time.perf_counter()
        return outcome, Timings(ahead_ms + (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)

    def _fill(self, data: np.ndarray) -> Any:
        pre = self.pre

        def fill(buffer: np.ndarray) -> None:
            pre(data, out=buffer)

        return fill

    def _float_input(self, data: np.ndarray) -> np.ndarray:
        spec = self.spec.with_quantization("float32", 0.0, 0)
        return Preprocessor(spec)(data)

    def warm_up(self, runs: int = 3) -> float:
        """Invoke on a neutral input; return the median latency in ms (a health check)."""
        if self.spec.is_image:
            probe = np.full((self.spec.height, self.spec.width, 3), 127, np.uint8)
        else:
            probe = np.zeros(self.spec.shape, np.float32)
        times = []
        for _ in range(max(1, runs)):
            start = time.perf_counter()
            self.run(probe)
            times.append((time.perf_counter() - start) * 1e3)
        return float(np.median(times))

    @property
    def retunable(self) -> bool:
        """Runs on the CPU, where the interpreter's thread count matters and can be changed."""
        return self.backend.delegate in CPU_DELEGATES and not self.backend.fell_back

    def rethread(self, threads: int) -> None:
        """Serve with ``threads`` interpreter threads from the next frame on. A thread count is
        fixed when an interpreter is built, so this builds another on the same model (a few
        milliseconds); the old one is closed first, so memory never holds both. Call it between
        frames, on the thread that runs the model."""
        if threads == self.backend.threads or not self.retunable:
            return
        previous, delegate = self.backend.threads, self.backend.delegate
        self.close()
        # The old interpreter was likely built on another thread, whose malloc arena keeps its
        # freed pages; give them back first, or the peak RSS holds two interpreters.
        release_free_memory()
        try:
            self.backend = load_backend(self.bundle.model_path, threads=threads, delegate=delegate)
        except BackendError:
            self.backend = load_backend(self.bundle.model_path, threads=previous,
                                        delegate=delegate)
            raise

    def close(self) -> None:
        try:
            self.backend.close()
        except BackendError:
            pass


def release_free_memory() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``; elsewhere a no-op)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)   # the symbols the process has loaded: libc's
    except (OSError, AttributeError):
        pass


def _copy_from(tensor: np.ndarray) -> Any:
    def fill(buffer: np.ndarray) -> None:
        np.copyto(buffer, tensor, casting="unsafe")  # as preprocessing in place would write it

    return fill


def open_model(path: Path, *, threads: int | None = None, delegate: str | None = None,
               allow_cpu_fallback: bool = False, state_dir: Path | None = None,
               trusted_keys: Sequence[Path] = (), hints: Hints | None = None,
               params: dict[str, Any] | None = None) -> LoadedModel:
    """Everything needed to serve ``path``; ModelError (one line) when it cannot be served."""
    try:
        bundle = resolve_bundle(path, state_dir=state_dir, trusted_keys=trusted_keys, hints=hints)
    except (BundleError, ValueError) as exc:
        raise ModelError(str(exc)) from None
    return open_bundle(bundle, threads=threads, delegate=delegate,
                       allow_cpu_fallback=allow_cpu_fallback, hints=hints, params=params,
                       source=path)


def open_bundle(bundle: Bundle, *, threads: int | None = None, delegate: str | None = None,
                allow_cpu_fallback: bool = False, hints: Hints | None = None,
                params: dict[str, Any] | None = None, source: Path | None = None) -> LoadedModel:
    """Load the interpreter for a bundle already resolved (and verified, when signed)."""
    path = source or bundle.root or bundle.model_path
    profile = bundle.profile
    threads = threads or _profile_threads(profile)
    delegate = delegate or _profile_delegate(profile)
    try:
        backend = load_backend(bundle.model_path, threads=threads, delegate=delegate,
                               allow_cpu_fallback=allow_cpu_fallback)
    except BackendError as exc:
        raise ModelError(str(exc)) from None
    try:
        return _assemble(bundle, backend, hints or Hints(), params or {}, path)
    except (ValueError, BundleError) as exc:
        backend.close()
        raise ModelError(f"{path}: {exc}") from None


class ModelLoader:
    """Loads a pipeline's model the way the daemon is configured to (state dir, trusted keys,
    threads, delegate): what ``Control`` is handed to load a candidate, instead of the daemon."""

    def __init__(self, state_dir: Path, trusted_keys: Sequence[Path]) -> None:
        self.state_dir = state_dir
        self.trusted_keys = list(trusted_keys)

    def resolve(self, path: Path, config: PipelineConfig) -> Bundle:
        try:
            return resolve_bundle(path, state_dir=self.state_dir, trusted_keys=self.trusted_keys,
                                  hints=hints_for(config))
        except (BundleError, ValueError) as exc:
            raise ModelError(str(exc)) from None

    def load(self, config: PipelineConfig, bundle: Bundle | None = None) -> LoadedModel:
        """``config``'s model: its own bundle path, or ``bundle`` (already resolved) instead."""
        if bundle is None:
            if config.bundle is None:
                raise ModelError(f"pipeline {config.name} names no bundle")
            bundle = self.resolve(config.bundle, config)
        threads = config.threads if isinstance(config.threads, int) else None
        model = open_bundle(bundle, threads=threads, delegate=config.delegate,
                            allow_cpu_fallback=config.allow_cpu_fallback,
                            hints=hints_for(config), params=config.postprocess)
        try:
            model.extra["golden"] = check_bundle(bundle.root, model.backend, model.spec)
        except GoldenMismatch as exc:
            model.close()
            raise ModelError(f"{bundle.name} v{bundle.version} refused: {exc}") from None
        return model


def hints_for(config: PipelineConfig) -> Hints:
    m = config.model
    return Hints(labels=m.labels, task=m.task, input_mean=m.input_mean, input_std=m.input_std,
                 color=m.color, resize=m.resize, decoder=m.decoder)


def _profile_threads(profile: dict[str, Any]) -> int | None:
    """The profile's thread count (one per core of its board), at most the cores this process
    may use: more interpreter threads than cores make each invoke wait on descheduled ones."""
    value = profile.get("threads")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        return None
    usable = cpu_count()
    if value > usable:
        log.info("profile %s asks for %d threads; using %d, the cores available",
                 profile.get("name", "?"), value, usable)
    return min(value, usable)


def _profile_delegate(profile: dict[str, Any]) -> str | None:
    value = profile.get("delegate")
    # A bundle made for a GPU or Edge TPU may still be served on a CPU-only host when allowed;
    # the profile's delegate is the default, the config's wins.
    return str(value) if isinstance(value, str) and value not in ("", "xnnpack") else None


def _assemble(bundle: Bundle, backend: Backend, hints: Hints, params: dict[str, Any],
              path: Path) -> LoadedModel:
    if len(backend.inputs) != 1:
        raise ValueError(f"the model has {len(backend.inputs)} inputs; one is supported")
    info = backend.inputs[0]
    spec = bundle.input_spec or _bare_spec(info.shape, info.dtype, info.scale, info.zero_point,
                                           hints)
    if tuple(spec.shape) != tuple(info.shape):
        raise ValueError(f"manifest input shape {list(spec.shape)} does not match the model's "
                         f"{list(info.shape)}")
    spec = spec.with_quantization(info.dtype, info.scale, info.zero_point)
    outputs = [OutputInfo(o.name, tuple(o.shape), o.dtype, o.scale, o.zero_point)
               for o in backend.outputs]
    merged = {**bundle.params, **params}
    if bundle.manifest is None and hints.decoder:
        merged.setdefault("decoder", hints.decoder)
    if spec.is_image and bundle.task == "detection":
        merged.setdefault("input_width", spec.width)
        merged.setdefault("input_height", spec.height)
    if bundle.task == "anomaly" and bundle.manifest is not None:
        merged.setdefault("reference_stats", bundle.manifest.reference_stats)
    post = build_postprocessor(bundle.task, outputs, bundle.labels, merged)
    wants_input = bundle.task == "anomaly" and outputs and \
        int(np.prod(outputs[0].shape)) == int(np.prod(spec.shape))
    bundle.input_spec = spec
    return LoadedModel(bundle, backend, spec, Preprocessor(spec), post, outputs,
                       bool(wants_input), path)


def _bare_spec(shape: tuple[int, ...], dtype: str, scale: float, zero_point: int,
               hints: Hints) -> InputSpec:
    channels = shape[3] if len(shape) == 4 else 1
    color = hints.color or ("GRAY" if channels == 1 else "RGB")
    if hints.input_mean is not None or hints.input_std is not None:
        mean = as_tuple(hints.input_mean if hints.input_mean is not None else 0.0)
        std = as_tuple(hints.input_std if hints.input_std is not None else 1.0)
    elif dtype in ("uint8", "int8") and scale > 0:
        # Without flags a quantized input takes pixels as they are (uint8) or shifted (int8).
        mean = (zero_point + (128.0 if dtype == "int8" else 0.0),)
        std = (1.0 / scale,)
    else:
        log.warning("bare float model without --input-mean/--input-std: feeding raw pixels 0-255")
        mean, std = (0.0,), (1.0,)
    return InputSpec(shape=tuple(shape), dtype=dtype, color=color,  # type: ignore[arg-type]
                     resize=hints.resize or "stretch",  # type: ignore[arg-type]
                     mean=mean, std=std)
