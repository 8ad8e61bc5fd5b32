"""The golden self-test: before a model serves, a few validation inputs the converter kept in the
bundle (``golden.npz``, as a source delivers them) go through the daemon's own preprocessing and
the model as loaded here, delegate and all; each output must land within one quantization step of
what the host's LiteRT gave. It catches a manifest whose preprocessing no longer matches the model,
corrupted weights and a delegate that computes differently, before a single result is published.

``golden.npz`` holds ``count``, ``input_<i>`` and ``output_<i>_<j>`` (sample i, output j).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.backends import Backend, BackendError
from edge_runtime.bundles.manifest import BundleError, inside
from edge_runtime.errors import EdgeError
from edge_runtime.preprocess import InputSpec, Preprocessor

GOLDEN_FILE = "golden.npz"
MAX_SAMPLES = 16
MAX_BYTES = 64 * 2**20
FLOAT_STEP = 1e-3   # a float output has no quantization step: this fraction of its range is one


class GoldenMismatch(EdgeError):
    """The model as loaded here does not reproduce the host's outputs."""


@dataclass(frozen=True)
class GoldenSample:
    input: np.ndarray
    outputs: tuple[np.ndarray, ...]


def write_golden(path: Path, samples: Sequence[GoldenSample]) -> None:
    """Write ``golden.npz`` (the converter's side)."""
    arrays: dict[str, np.ndarray] = {"count": np.asarray(len(samples))}
    for i, sample in enumerate(samples[:MAX_SAMPLES]):
        arrays[f"input_{i}"] = sample.input
        for j, out in enumerate(sample.outputs):
            arrays[f"output_{i}_{j}"] = out
    with path.open("wb") as handle:
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]


def read_golden(path: Path) -> list[GoldenSample]:
    """The samples in ``path``; GoldenMismatch naming the problem when it cannot be read."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise GoldenMismatch(f"{path.name} is larger than {MAX_BYTES} bytes")
        with np.load(path, allow_pickle=False) as data:
            count = int(data["count"])
            if not 0 <= count <= MAX_SAMPLES:
                raise GoldenMismatch(f"{path.name} says it holds {count} samples")
            return [GoldenSample(np.asarray(data[f"input_{i}"]),
                                 tuple(np.asarray(data[k]) for k in _outputs_of(data.files, i)))
                    for i in range(count)]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise GoldenMismatch(f"{path.name} cannot be read: {exc}") from None


def check_bundle(root: Path | None, backend: Backend, spec: InputSpec) -> int | None:
    """Run the bundle's golden samples through ``backend`` as loaded here; how many passed, None
    when the bundle has no ``golden.npz`` (made with ``--no-golden``, or before it existed).
    GoldenMismatch names the sample and output that differed."""
    if root is None:
        return None
    try:
        path = inside(root, GOLDEN_FILE)
    except BundleError as exc:
        raise GoldenMismatch(str(exc)) from None
    if path is None:
        return None
    return self_test(backend, spec, read_golden(path))


def _outputs_of(files: Sequence[str], i: int) -> Iterator[str]:
    j = 0
    while f"output_{i}_{j}" in files:
        yield f"output_{i}_{j}"
        j += 1


def self_test(backend: Backend, spec: InputSpec, samples: Sequence[GoldenSample]) -> int:
    """Run every sample; return how many passed (all of them) or raise GoldenMismatch saying
    which sample and which output differed, and by how much."""
    pre = Preprocessor(spec)
    names = [o.name for o in backend.outputs]
    for i, sample in enumerate(samples):
        try:
            backend.fill_input(_filler(pre, sample.input))
            backend.invoke()
            outputs = backend.get_outputs()
        except (ValueError, BackendError) as exc:
            raise GoldenMismatch(f"golden sample {i} does not run: {exc}") from None
        if len(outputs) != len(sample.outputs):
            raise GoldenMismatch(f"golden sample {i}: the model has {len(outputs)} outputs, "
                                 f"{len(sample.outputs)} were recorded")
        for j, (got, expected) in enumerate(zip(outputs, sample.outputs, strict=True)):
            steps = _steps_apart(got, expected)
            if steps > 1.0:
                name = names[j] if j < len(names) else str(j)
                raise GoldenMismatch(
                    f"golden self-test failed: sample {i}, output {j} ({name}) is "
                    f"{steps:.0f} quantization steps from the recorded one (at most 1 allowed)")
    return len(samples)


def _filler(pre: Preprocessor, data: np.ndarray) -> Callable[[np.ndarray], None]:
    def fill(buffer: np.ndarray) -> None:
        pre(data, out=buffer)

    return fill


def _steps_apart(got: np.ndarray, expected: np.ndarray) -> float:
    if got.shape != expected.shape:
        return float("inf")
    if np.issubdtype(expected.dtype, np.integer):
        return float(np.max(np.abs(got.astype(np.int64) - expected.astype(np.int64)), initial=0))
    span = float(np.max(expected, initial=0.0) - np.min(expected, initial=0.0)) or 1.0
    diff = np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)), initial=0.0)
    return float(diff) / (span * FLOAT_STEP)
