"""Input sources, registered by kind. ``open_source(spec)`` picks the one a spec names.

Each kind is one small module with a :class:`Source` subclass whose ``from_spec`` claims the specs
it understands; adding a kind is one line in :data:`SOURCE_KINDS`. Kinds are tried in order, so
URL schemes and device names come before plain paths.
"""

from __future__ import annotations

import importlib

from edge_runtime.redact import redact
from edge_runtime.sources.base import Source, SourceError, SourceOptions, WindowSpec, local_path

__all__ = [
    "SOURCE_KINDS",
    "Source",
    "SourceError",
    "SourceOptions",
    "WindowSpec",
    "open_source",
    "register_source",
    "source_class",
]

SOURCE_KINDS: dict[str, str | type[Source]] = {
    "stdin": "edge_runtime.sources.stdin:StdinSource",
    "serial": "edge_runtime.sources.serial:SerialSource",
    "csv": "edge_runtime.sources.csv:CsvSource",
    "stream": "edge_runtime.sources.video:StreamSource",
    "picamera2": "edge_runtime.sources.picam:PiCameraSource",
    "camera": "edge_runtime.sources.camera:CameraSource",
    "images": "edge_runtime.sources.images:ImageFolderSource",
    "video": "edge_runtime.sources.video:VideoFileSource",
}

EXPECTED = (
    "expected an image folder, a video file, an rtsp:// or http(s):// URL, a camera (0 or "
    "/dev/video0), picamera2, serial://PORT?baud=N, csv:PATH or - for stdin"
)


def register_source(kind: str, target: str | type[Source]) -> None:
    """Add a kind, given as a class or a lazy ``"module:Class"`` reference, tried last."""
    SOURCE_KINDS[kind] = target


def source_class(kind: str) -> type[Source]:
    """The class registered for ``kind``, importing its module on first use."""
    target = SOURCE_KINDS.get(kind)
    if target is None:
        raise SourceError(f"unknown source kind {kind!r}")
    if not isinstance(target, str):
        return target
    module_name, _, class_name = target.partition(":")
    loaded: object = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(loaded, type) and issubclass(loaded, Source)):
        raise SourceError(f"source kind {kind!r} does not name a Source class")
    return loaded


def open_source(spec: str, options: SourceOptions | None = None) -> Source:
    """The source ``spec`` names (see the CLI's ``--source``). Checks it exists; opens nothing.

    Raises SourceError naming the spec when no kind claims it or the path does not exist.
    """
    options = options or SourceOptions()
    spec = spec.strip()
    if not spec:
        raise SourceError(f"empty source ({EXPECTED})")
    for kind in SOURCE_KINDS:
        source = source_class(kind).from_spec(spec, options)
        if source is not None:
            return source
    raise SourceError(redact(_unclaimed(spec, options)))


def _unclaimed(spec: str, options: SourceOptions) -> str:
    if "://" in spec:
        return f"unknown source {spec!r}: unsupported URL scheme ({EXPECTED})"
    path = local_path(spec, options)
    if path.is_file():
        return f"source {spec!r}: unsupported file type {path.suffix or '(none)'!r} ({EXPECTED})"
    if path.exists():
        return f"source {spec!r} is neither a file nor a folder"
    return f"source {spec!r} not found (no such file or folder)"
