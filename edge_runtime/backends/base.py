"""What every interpreter backend offers the pipeline, whatever runtime sits underneath."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from edge_runtime.errors import EdgeError


class BackendError(EdgeError):
    """A model or delegate that cannot be loaded or run; the message is one line."""


class ModelFileError(BackendError):
    """The model itself cannot be loaded (missing, empty, corrupt, unsupported ops)."""


class DelegateError(BackendError):
    """A requested delegate cannot be loaded or cannot run the model."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One model input or output. ``scale`` is 0.0 for tensors that are not quantized."""

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale > 0.0

    def to_manifest(self) -> dict[str, object]:
        """The manifest's view of a tensor: name, shape, dtype, quantization."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "quantization": {"scale": self.scale, "zero_point": self.zero_point},
        }


class Backend(ABC):
    """A loaded model, ready to run one item at a time. Not thread-safe: one owner thread.

    Per frame the pipeline calls :meth:`fill_input`, :meth:`invoke`, then :meth:`get_outputs`.
    """

    runtime: str
    delegate: str
    requested_delegate: str
    fell_back: bool
    fallback_reason: str | None
    threads: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    @abstractmethod
    def fill_input(self, fill: Callable[[np.ndarray], object], index: int = 0) -> None:
        """Hand ``fill`` a writable view of input ``index``'s buffer; no reference outlives it."""

    @abstractmethod
    def set_input(self, array: np.ndarray, index: int = 0) -> None:
        """Copy ``array`` into input ``index``."""

    @abstractmethod
    def invoke(self) -> None:
        """Run the model once on the current inputs."""

    @abstractmethod
    def get_outputs(self) -> list[np.ndarray]:
        """Copies of every output tensor, in output order."""

    @abstractmethod
    def ops(self) -> list[str]:
        """The model's operator names in execution order (delegate kernels left out)."""

    @abstractmethod
    def close(self) -> None:
        """Release the interpreter and any delegate; later calls raise :class:`BackendError`."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
