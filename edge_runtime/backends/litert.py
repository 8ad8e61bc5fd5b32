"""The LiteRT interpreter family: ai_edge_litert, tflite_runtime and tf.lite share one API.

Nothing here imports a runtime at module import time; :func:`import_runtime` does it on demand.
"""

from __future__ import annotations

import logging
import os
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends.base import (
    Backend,
    BackendError,
    DelegateError,
    ModelFileError,
    TensorInfo,
)
from edge_runtime.backends.delegates import DelegateSpec, first_line, load_external, unavailable

log = logging.getLogger(__name__)

RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow.lite")
FLATBUFFER_ID = b"TFL3"
_STILL_REFERENCED = "reference to internal data"
_warned: set[str] = set()


@dataclass(frozen=True, slots=True)
class Runtime:
    """One importable interpreter implementation."""

    name: str
    version: str
    interpreter_class: Callable[..., Any]
    load_delegate: Callable[..., Any]
    plain_cpu_resolver: object | None  # OpResolverType that skips XNNPACK, when available

    @property
    def description(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A model by path (memory-mapped by the runtime) or by content."""

    name: str
    path: str | None = None
    content: bytes | None = None


def import_runtime(name: str) -> Runtime:
    """Import one runtime by name. Raises ImportError when it is absent or broken."""
    if name == "ai_edge_litert":
        import ai_edge_litert
        from ai_edge_litert import interpreter as litert

        return _runtime(name, getattr(ai_edge_litert, "__version__", "unknown"), litert)
    if name == "tflite_runtime":
        import tflite_runtime
        from tflite_runtime import interpreter as tflite

        return _runtime(name, getattr(tflite_runtime, "__version__", "unknown"), tflite)
    if name == "tensorflow.lite":
        import tensorflow as tf

        return Runtime(
            name, tf.__version__, tf.lite.Interpreter, tf.lite.experimental.load_delegate,
            _plain_cpu_resolver(tf.lite.experimental),
        )
    raise ValueError(f"unknown runtime {name!r}; expected one of {', '.join(RUNTIMES)}")


def _runtime(name: str, version: str, module: Any) -> Runtime:
    return Runtime(
        name, str(version), module.Interpreter, module.load_delegate, _plain_cpu_resolver(module)
    )


def _plain_cpu_resolver(module: Any) -> object | None:
    resolver_type = getattr(module, "OpResolverType", None)
    return getattr(resolver_type, "BUILTIN_WITHOUT_DEFAULT_DELEGATES", None)


def read_model(model: str | os.PathLike[str] | bytes | bytearray | memoryview) -> ModelSource:
    """Check that ``model`` looks like a TFLite flatbuffer before a runtime sees it."""
    if isinstance(model, bytes | bytearray | memoryview):
        content = bytes(model)
        _check_header(content[:8], "<bytes>", len(content), "model")
        return ModelSource(name="<bytes>", content=content)
    path = Path(model)
    name = str(model)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ModelFileError(f"cannot load model {name}: is a directory, not a .tflite file")
        with path.open("rb") as f:
            header = f.read(8)
    except FileNotFoundError:
        raise ModelFileError(f"cannot load model {name}: file not found") from None
    except OSError as exc:
        raise ModelFileError(f"cannot load model {name}: {exc.strerror or exc}") from None
    _check_header(header, name, size, "file")
    return ModelSource(name=name, path=str(path))


def _check_header(header: bytes, name: str, size: int, noun: str) -> None:
    if size == 0:
        raise ModelFileError(f"cannot load model {name}: {noun} is empty")
    if header[4:8] != FLATBUFFER_ID:
        raise ModelFileError(f"cannot load model {name}: not a TFLite flatbuffer")


def model_error(source: ModelSource, exc: BaseException) -> ModelFileError:
    line = first_line(exc) or type(exc).__name__
    if "not a valid Flatbuffer" in line:
        line = "not a TFLite flatbuffer (corrupt or truncated)"
    elif "edgetpu-custom-op" in line:
        line = "compiled for the Edge TPU and needs the edgetpu delegate"
    return ModelFileError(f"cannot load model {source.name}: {line}")


def create_interpreter(
    runtime: Runtime, source: ModelSource, threads: int, *,
    delegates: list[Any] | None = None, plain_cpu: bool = False,
) -> Any:
    """A ready interpreter (tensors allocated); BackendError if the model does not load."""
    kwargs: dict[str, Any] = {"num_threads": threads}
    if source.path is not None:
        kwargs["model_path"] = source.path
    else:
        kwargs["model_content"] = source.content
    if delegates:
        kwargs["experimental_delegates"] = delegates
    if plain_cpu and runtime.plain_cpu_resolver is not None:
        kwargs["experimental_op_resolver_type"] = runtime.plain_cpu_resolver
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            interpreter = runtime.interpreter_class(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise model_error(source, exc) from None
    except SystemError as exc:  # tflite_runtime 2.14 under NumPy 2
        reason = first_line(exc) or "SystemError"
        raise BackendError(f"{runtime.description} cannot create an interpreter: {reason}") from None
    return interpreter


def open_interpreter(
    runtime: Runtime, source: ModelSource, spec: DelegateSpec, threads: int,
    allow_cpu_fallback: bool,
) -> tuple[Any, str, str | None]:
    """(interpreter, active delegate label, fallback reason or None)."""
    if spec.is_cpu:
        return _cpu_interpreter(runtime, source, spec, threads), _cpu_label(runtime, spec), None
    try:
        return _delegated_interpreter(runtime, source, spec, threads), spec.label, None
    except DelegateError as exc:
        if not allow_cpu_fallback:
            raise
        reason = str(exc)
    _warn_once(f"{reason}; running on the CPU")
    try:
        return create_interpreter(runtime, source, threads), "xnnpack", reason
    except ModelFileError as exc:
        raise ModelFileError(f"{exc} ({reason})") from None


def _cpu_interpreter(runtime: Runtime, source: ModelSource, spec: DelegateSpec,
                     threads: int) -> Any:
    plain = spec.kind == "none"
    if plain and runtime.plain_cpu_resolver is None:
        _warn_once(f"{runtime.description} cannot disable XNNPACK; delegate 'none' uses it anyway")
    return create_interpreter(runtime, source, threads, plain_cpu=plain)


def _cpu_label(runtime: Runtime, spec: DelegateSpec) -> str:
    if spec.kind == "none" and runtime.plain_cpu_resolver is not None:
        return "none"
    return "xnnpack"


def _delegated_interpreter(runtime: Runtime, source: ModelSource, spec: DelegateSpec,
                           threads: int) -> Any:
    delegate = load_external(spec, runtime.load_delegate)
    try:
        return create_interpreter(runtime, source, threads, delegates=[delegate])
    except ModelFileError as exc:
        # Tell a model the runtime rejects from a delegate that rejects the model.
        create_interpreter(runtime, source, threads)
        raise unavailable(spec, f"it could not run this model ({exc.args[0]})") from None


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def tensor_info(details: dict[str, Any]) -> TensorInfo:
    scale, zero_point = details.get("quantization") or (0.0, 0)
    return TensorInfo(
        name=str(details["name"]),
        index=int(details["index"]),
        shape=tuple(int(v) for v in details["shape"]),
        dtype=np.dtype(details["dtype"]).name,
        scale=float(scale),
        zero_point=int(zero_point),
    )


class LiteRTBackend(Backend):
    """A :class:`Backend` over any interpreter of the LiteRT family."""

    def __init__(self, interpreter: Any, *, runtime: str, delegate: str, requested_delegate: str,
                 threads: int, fallback_reason: str | None = None) -> None:
        self.runtime = runtime
        self.delegate = delegate
        self.requested_delegate = requested_delegate
        self.fell_back = fallback_reason is not None
        self.fallback_reason = fallback_reason
        self.threads = threads
        self.inputs = [tensor_info(d) for d in interpreter.get_input_details()]
        self.outputs = [tensor_info(d) for d in interpreter.get_output_details()]
        self._interpreter: Any = interpreter
        # Cached once: the per-frame path touches only these.
        self._input_views: list[Callable[[], np.ndarray]] = [
            interpreter.tensor(t.index) for t in self.inputs
        ]
        self._input_dtypes = [np.dtype(t.dtype) for t in self.inputs]
        self._output_indexes = tuple(t.index for t in self.outputs)
        self._invoke: Callable[[], None] = interpreter.invoke
        self._get_tensor: Callable[[int], np.ndarray] = interpreter.get_tensor
        self._set_tensor: Callable[[int, np.ndarray], None] = interpreter.set_tensor

    def fill_input(self, fill: Callable[[np.ndarray], object], index: int = 0) -> None:
        view = self._input_view(index)()
        try:
            fill(view)
        except BaseException as exc:
            del view
            # A kept exception must not keep the buffer alive through its frames' locals.
            traceback.clear_frames(exc.__traceback__)
            raise
        del view

    def _input_view(self, index: int) -> Callable[[], np.ndarray]:
        self._check_open()
        try:
            return self._input_views[index]
        except IndexError:
            raise ValueError(self._no_input(index)) from None

    def set_input(self, array: np.ndarray, index: int = 0) -> None:
        self._check_open()
        if not 0 <= index < len(self.inputs):
            raise ValueError(self._no_input(index))
        info = self.inputs[index]
        self._set_tensor(info.index, conform(array, info, self._input_dtypes[index], index))

    def invoke(self) -> None:
        try:
            self._invoke()
        except (RuntimeError, ValueError) as exc:
            raise self._invoke_error(exc) from None

    def _invoke_error(self, exc: BaseException) -> BackendError:
        self._check_open()
        if _STILL_REFERENCED in str(exc):
            return BackendError(
                "cannot invoke: a NumPy view of an interpreter buffer is still referenced "
                "(do not keep the array fill_input hands out)"
            )
        return BackendError(f"inference failed: {first_line(exc) or type(exc).__name__}")

    def get_outputs(self) -> list[np.ndarray]:
        get = self._get_tensor
        return [get(i) for i in self._output_indexes]

    def ops(self) -> list[str]:
        self._check_open()
        details = getattr(self._interpreter, "_get_ops_details", None)
        if details is None:
            return []
        return [str(d["op_name"]) for d in details() if d["op_name"] != "DELEGATE"]

    def close(self) -> None:
        self._interpreter = None
        self._input_views = []
        self._invoke = self._get_tensor = self._set_tensor = _closed

    def _check_open(self) -> None:
        if self._interpreter is None:
            raise BackendError("backend is closed")

    def _no_input(self, index: int) -> str:
        return f"the model has {len(self.inputs)} input(s); there is no input {index}"


def _closed(*_args: object) -> Any:
    raise BackendError("backend is closed")


def conform(array: np.ndarray, info: TensorInfo, dtype: np.dtype[Any], index: int) -> np.ndarray:
    """``array`` shaped and typed for ``info``; ValueError naming the mismatch otherwise."""
    arr = np.asarray(array)
    if arr.dtype != dtype:
        if arr.dtype.kind != "f" or dtype.kind != "f":
            raise ValueError(f"input {index} takes {info.dtype}, got {arr.dtype.name}")
        arr = arr.astype(dtype)
    if arr.shape != info.shape:
        if arr.size != int(np.prod(info.shape)):
            raise ValueError(
                f"input {index} takes shape {list(info.shape)}, got {list(arr.shape)}"
            )
        arr = arr.reshape(info.shape)
    return arr
