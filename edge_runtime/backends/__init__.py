"""Interpreter backends: load a ``.tflite`` on the best runtime present, with an optional delegate.

Runtimes are tried in this order: ``ai_edge_litert``, ``tflite_runtime``, and ``tensorflow.lite``
only when neither of the others is installed, so the device side never imports TensorFlow when
LiteRT is there. Runtimes are imported inside :func:`load_backend`, never at module import.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence

from edge_runtime.backends.base import (
    Backend,
    BackendError,
    DelegateError,
    ModelFileError,
    TensorInfo,
)
from edge_runtime.backends.delegates import DelegateSpec, parse_delegate
from edge_runtime.backends.litert import (
    RUNTIMES,
    LiteRTBackend,
    Runtime,
    import_runtime,
    open_interpreter,
    read_model,
)

__all__ = [
    "RUNTIMES",
    "Backend",
    "BackendError",
    "DelegateError",
    "DelegateSpec",
    "ModelFileError",
    "TensorInfo",
    "default_threads",
    "load_backend",
    "parse_delegate",
    "runtime_candidates",
]

MAX_DEFAULT_THREADS = 4
ModelInput = str | os.PathLike[str] | bytes | bytearray | memoryview


def runtime_candidates() -> list[str]:
    """Installed runtimes in the order :func:`load_backend` tries them (nothing is imported)."""
    found = [name for name in RUNTIMES[:2] if _installed(name)]
    if not found and _installed("tensorflow"):
        found.append("tensorflow.lite")
    return found


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def default_threads() -> int:
    """Every usable core, at most four: beyond that XNNPACK rarely gains on small models."""
    from edge_runtime.system.sysinfo import cpu_count

    return max(1, min(MAX_DEFAULT_THREADS, cpu_count()))


def load_backend(
    model: ModelInput,
    *,
    threads: int | None = None,
    delegate: str | None = None,
    delegate_options: Mapping[str, str] | None = None,
    allow_cpu_fallback: bool = False,
    runtimes: Sequence[str] | None = None,
) -> Backend:
    """Load ``model`` (a path or the flatbuffer's bytes) and allocate its tensors.

    ``threads`` defaults to :func:`default_threads`. ``delegate`` is a name accepted by
    :func:`parse_delegate`. When the delegate cannot load and ``allow_cpu_fallback`` is true, the
    CPU runs the model, ``fell_back`` is set and one warning is logged. Raises
    :class:`BackendError` (one line) for every failure.
    """
    spec = parse_delegate(delegate, delegate_options)
    thread_count = _check_threads(threads)
    source = read_model(model)
    runtime = _first_runtime(runtimes)
    interpreter, active, reason = open_interpreter(
        runtime, source, spec, thread_count, allow_cpu_fallback
    )
    return LiteRTBackend(
        interpreter, runtime=runtime.description, delegate=active,
        requested_delegate=spec.label, threads=thread_count, fallback_reason=reason,
    )


def _check_threads(threads: int | None) -> int:
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise BackendError(f"threads must be a positive integer, got {threads!r}")
    return threads


def _first_runtime(runtimes: Sequence[str] | None) -> Runtime:
    names = list(runtimes) if runtimes is not None else runtime_candidates()
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown:
        raise BackendError(f"unknown runtime {unknown[0]!r}; expected one of {', '.join(RUNTIMES)}")
    problems: list[str] = []
    for name in names:
        try:
            return import_runtime(name)
        except Exception as exc:  # a broken install raises more than ImportError
            problems.append(f"{name}: {exc}".splitlines()[0])
    detail = "; ".join(problems) if problems else "none installed"
    raise BackendError(f"no usable TFLite runtime (install ai-edge-litert): {detail}")
