"""The golden self-test's file and comparison, and the shadow comparison's decision."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.backends.base import Backend, TensorInfo
from edge_runtime.monitor.golden import (
    GoldenMismatch,
    GoldenSample,
    read_golden,
    self_test,
    write_golden,
)
from edge_runtime.monitor.shadow import PromoteCriteria, ShadowStats
from edge_runtime.preprocess import InputSpec, Preprocessor

SPEC = InputSpec(shape=(1, 8, 8, 1), dtype="int8", color="GRAY", mean=(0.0,), std=(1.0,),
                 scale=1.0, zero_point=-128)


class SumBackend(Backend):
    """A stand-in model: one int8 output, a clipped row sum of the input, plus ``bias``."""

    def __init__(self, bias: int = 0) -> None:
        self.bias = bias
        self.inputs = [TensorInfo("x", 0, SPEC.shape, "int8", 1.0, -128)]
        self.outputs = [TensorInfo("rows", 1, (1, 8), "int8", 1.0, 0)]
        self._input = np.zeros(SPEC.shape, np.int8)

    def fill_input(self, fill: Callable[[np.ndarray], object], index: int = 0) -> None:
        fill(self._input)

    def set_input(self, array: np.ndarray, index: int = 0) -> None:
        self._input[...] = array

    def invoke(self) -> None:
        pass

    def get_outputs(self) -> list[np.ndarray]:
        rows = self._input.astype(np.int64).reshape(8, 8).sum(axis=1) // 8 + self.bias
        return [np.clip(rows, -128, 127).astype(np.int8).reshape(1, 8)]

    def ops(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


def samples(backend: Backend, count: int = 4) -> list[GoldenSample]:
    rng = np.random.default_rng(1)
    pre = Preprocessor(SPEC)
    out: list[GoldenSample] = []
    for _ in range(count):
        image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        backend.fill_input(lambda buf, im=image: pre(im, out=buf))  # type: ignore[misc]
        out.append(GoldenSample(image, tuple(backend.get_outputs())))
    return out


def test_golden_samples_round_trip_and_pass_on_the_same_model(tmp_path: Path) -> None:
    golden = samples(SumBackend())
    write_golden(tmp_path / "golden.npz", golden)
    again = read_golden(tmp_path / "golden.npz")
    assert len(again) == 4 and np.array_equal(again[2].input, golden[2].input)
    assert self_test(SumBackend(), SPEC, again) == 4
    assert self_test(SumBackend(bias=1), SPEC, again) == 4  # one step: allowed


def test_a_model_that_computes_differently_is_named_by_sample_and_output(tmp_path: Path) -> None:
    golden = samples(SumBackend())
    with pytest.raises(GoldenMismatch, match=r"sample 0, output 0 \(rows\) is 5 quantization"):
        self_test(SumBackend(bias=5), SPEC, golden)


def test_preprocessing_that_no_longer_matches_is_caught() -> None:
    golden = samples(SumBackend())
    inverted = InputSpec(shape=SPEC.shape, dtype="int8", color="GRAY", mean=(255.0,), std=(-1.0,),
                         scale=1.0, zero_point=-128)
    with pytest.raises(GoldenMismatch, match="sample 0"):
        self_test(SumBackend(), inverted, golden)


def test_an_unreadable_golden_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "golden.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(GoldenMismatch, match=r"golden\.npz cannot be read"):
        read_golden(path)


def test_shadow_promotes_only_after_enough_frames_that_agree() -> None:
    stats = ShadowStats()
    criteria = PromoteCriteria(frames=10, agreement=0.9)
    for _ in range(9):
        stats.add(("a", 0.9, 2.0), ("a", 0.8, 2.5))
        assert stats.decide(criteria) is None
    stats.add(("b", 0.9, 2.0), ("a", 0.8, 2.5))
    decision = stats.decide(criteria)
    assert decision is not None and decision[0] is True
    assert stats.summary()["agreement"] == 0.9


def test_shadow_refuses_with_the_agreement_or_the_latency() -> None:
    disagreeing = ShadowStats()
    for i in range(10):
        disagreeing.add(("a", 0.9, 2.0), ("a" if i < 5 else "b", 0.5, 2.0))
    promote, why = disagreeing.decide(PromoteCriteria(frames=10, agreement=0.9)) or (None, "")
    assert promote is False and "agreement 50.0%" in why
    slow = ShadowStats()
    for _ in range(10):
        slow.add(("a", 0.9, 2.0), ("a", 0.9, 30.0))
    promote, why = slow.decide(PromoteCriteria(frames=10, max_latency_ms=10)) or (None, "")
    assert promote is False and "latency" in why


def test_promote_criteria_are_checked() -> None:
    assert PromoteCriteria.from_args({"frames": 50, "agreement": 0.97}).frames == 50
    for bad in ({"frames": 0}, {"agreement": 2}, {"max_latency_ms": -1}, {"speed": 1},
                {"frames": True}):
        with pytest.raises(ValueError):
            PromoteCriteria.from_args(bad)
