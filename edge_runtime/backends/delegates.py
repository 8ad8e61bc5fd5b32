"""Delegate names → shared libraries and options, and loading them without noise.

Accepted names: ``None``/``"xnnpack"``/``"cpu"`` (the default CPU path, XNNPACK built in),
``"none"`` (plain CPU kernels), ``"edgetpu"`` with an optional device (``"edgetpu:usb"``,
``"edgetpu:pci"``, ``"edgetpu:usb:0"``, ``"edgetpu:0"``), ``"gpu"``, or a path to an external
delegate library (``/opt/vendor/libdelegate.so``).
"""

from __future__ import annotations

import ctypes
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edge_runtime.backends.base import BackendError, DelegateError

DelegateKind = Literal["xnnpack", "none", "edgetpu", "gpu", "external"]

GPU_LIBRARY = "libtensorflowlite_gpu_delegate.so"
_EDGETPU_LIBRARIES = {"linux": "libedgetpu.so.1", "darwin": "libedgetpu.1.dylib"}
_EDGETPU_DEVICE = re.compile(r"^(?:(?:usb|pci)(?::\d+)?|\d+)$")
_LIBRARY_NAME = re.compile(r"(\.so(\.\d+)*|\.dylib|\.dll)$")
_CPU_NAMES = {"xnnpack": "xnnpack", "cpu": "xnnpack", "none": "none"}
EXPECTED = "xnnpack, none, edgetpu[:usb|:pci][:N], gpu, or a path to a delegate .so"


@dataclass(frozen=True, slots=True)
class DelegateSpec:
    """A parsed delegate request. ``label`` is what the backend reports once it is active."""

    kind: DelegateKind
    label: str
    library: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def is_cpu(self) -> bool:
        return self.library is None


def edgetpu_library() -> str:
    """The Edge TPU runtime library name on this platform."""
    if sys.platform.startswith("win"):
        return "edgetpu.dll"
    return _EDGETPU_LIBRARIES.get(sys.platform, _EDGETPU_LIBRARIES["linux"])


def parse_delegate(name: str | None, options: Mapping[str, str] | None = None) -> DelegateSpec:
    """Turn a delegate name from a config or profile into a :class:`DelegateSpec`."""
    extra = {str(k): str(v) for k, v in (options or {}).items()}
    text = (name or "xnnpack").strip()
    lowered = text.lower()
    if lowered in _CPU_NAMES:
        return DelegateSpec(kind=_cpu_kind(lowered), label=_CPU_NAMES[lowered])
    if lowered == "edgetpu" or lowered.startswith("edgetpu:"):
        return _edgetpu(lowered, extra)
    if lowered == "gpu":
        return DelegateSpec(kind="gpu", label="gpu", library=GPU_LIBRARY, options=extra)
    if _LIBRARY_NAME.search(text):
        return DelegateSpec(kind="external", label=text, library=text, options=extra)
    raise BackendError(f"unknown delegate {text!r}; expected {EXPECTED}")


def _cpu_kind(lowered: str) -> DelegateKind:
    return "none" if lowered == "none" else "xnnpack"


def _edgetpu(lowered: str, extra: dict[str, str]) -> DelegateSpec:
    device = lowered.partition(":")[2]
    if device and not _EDGETPU_DEVICE.match(device):
        raise BackendError(
            f"bad Edge TPU device {device!r} in delegate {lowered!r}; "
            "expected usb, pci, usb:N, pci:N or N"
        )
    options: dict[str, str] = {}
    if device:
        # libedgetpu spells "any device number N" as ":N".
        options["device"] = f":{device}" if device.isdigit() else device
    options.update(extra)
    return DelegateSpec(kind="edgetpu", label=lowered, library=edgetpu_library(), options=options)


def load_external(spec: DelegateSpec, loader: Callable[..., Any]) -> Any:
    """Load ``spec``'s library with the runtime's ``load_delegate``.

    Raises BackendError("<label> delegate unavailable: <reason>") on any failure. The library is
    opened with ctypes first so that a missing or foreign library is reported in one line instead
    of through the runtime's half-built delegate object.
    """
    assert spec.library is not None
    try:
        library = ctypes.CDLL(spec.library)
    except OSError as exc:
        raise unavailable(spec, str(exc)) from None
    if not hasattr(library, "tflite_plugin_create_delegate"):
        raise unavailable(spec, f"{spec.library} is not a TFLite delegate library")
    try:
        return loader(spec.library, dict(spec.options))
    except Exception as exc:  # the runtimes raise ValueError, RuntimeError or OSError
        raise unavailable(spec, first_line(exc) or "the delegate refused to start") from None


def unavailable(spec: DelegateSpec, reason: str) -> DelegateError:
    return DelegateError(f"{spec.label} delegate unavailable: {reason}")


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message (runtimes add multi-line context)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return ""
