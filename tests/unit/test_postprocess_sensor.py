from __future__ import annotations

import json

import numpy as np
import pytest

from edge_runtime.postprocess import Outcome, OutputInfo, PostContext, build_postprocessor
from edge_runtime.postprocess.sensor import threshold_from_stats


def run(task: str, arrays: list[np.ndarray], infos: list[OutputInfo] | None = None,
        context: PostContext | None = None, **params: object) -> Outcome:
    infos = infos or [OutputInfo(f"o{i}", tuple(a.shape), str(a.dtype)) for i, a in
                      enumerate(arrays)]
    return build_postprocessor(task, infos, [], params)(arrays, context or PostContext())


# --- regression --------------------------------------------------------------------------------


def test_regression_values_are_flattened_floats() -> None:
    outcome = run("regression", [np.array([[1.5, -2.25, 1e-7]], np.float32)])
    assert outcome.payload == {"values": [1.5, -2.25, pytest.approx(1e-7)]}
    assert (outcome.top_index, outcome.top_score, outcome.top_label) == (0, 1.5, None)


def test_regression_dequantizes_int8() -> None:
    q = np.array([[-128, 0, 27, 127]], np.int8)
    info = OutputInfo("y", (1, 4), "int8", scale=0.5, zero_point=-28)
    values = run("regression", [q], [info]).payload["values"]
    assert values == pytest.approx([(v + 28) * 0.5 for v in (-128, 0, 27, 127)])


def test_regression_concatenates_several_outputs() -> None:
    outcome = run("regression", [np.array([[1.0]], np.float32), np.array([[2.0, 3.0]], np.float32)])
    assert outcome.payload["values"] == [1.0, 2.0, 3.0]
    assert outcome.top_index == 2


def test_regression_values_are_compact() -> None:
    value = run("regression", [np.array([123.456789123], np.float64)]).payload["values"][0]
    assert value == 123.457
    assert json.dumps({"v": value}) == '{"v": 123.457}'


# --- anomaly -----------------------------------------------------------------------------------


def test_anomaly_single_score_against_threshold() -> None:
    high = run("anomaly", [np.array([[0.8]], np.float32)], threshold=0.6)
    assert high.payload == {"anomaly": {"score": pytest.approx(0.8), "threshold": 0.6,
                                        "is_anomaly": True}}
    assert (high.top_label, high.top_index) == ("anomaly", 1)
    low = run("anomaly", [np.array([[0.3]], np.float32)], threshold=0.6)
    assert low.payload["anomaly"]["is_anomaly"] is False
    assert (low.top_label, low.top_index) == ("normal", 0)
    assert low.top_score == pytest.approx(0.3)


def test_anomaly_quantized_score_and_default_threshold() -> None:
    info = OutputInfo("score", (1, 1), "uint8", scale=1 / 255, zero_point=0)
    outcome = run("anomaly", [np.array([[204]], np.uint8)], [info])
    assert outcome.payload["anomaly"]["score"] == pytest.approx(0.8, abs=1e-5)
    assert outcome.payload["anomaly"]["threshold"] == 0.5
    assert outcome.payload["anomaly"]["is_anomaly"] is True


def test_anomaly_reconstruction_error_is_mse_against_the_input() -> None:
    rng = np.random.default_rng(3)
    original = rng.normal(size=(1, 8, 3)).astype(np.float32)
    reconstruction = original + np.float32(0.5)
    context = PostContext(input_tensor=original)
    outcome = run("anomaly", [reconstruction], context=context, threshold=0.2)
    assert outcome.payload["anomaly"]["score"] == pytest.approx(0.25, rel=1e-5)
    assert outcome.payload["anomaly"]["is_anomaly"] is True
    close = run("anomaly", [original + np.float32(0.1)], context=context, threshold=0.2)
    assert close.payload["anomaly"]["score"] == pytest.approx(0.01, rel=1e-4)
    assert close.payload["anomaly"]["is_anomaly"] is False


def test_anomaly_reconstruction_of_a_quantized_model() -> None:
    original = np.linspace(-1, 1, 12, dtype=np.float32).reshape(1, 12)
    scale, zero_point = 2 / 255, 0
    q = np.clip(np.round(original / scale) + zero_point, -128, 127).astype(np.int8)
    info = OutputInfo("recon", (1, 12), "int8", scale, zero_point)
    score = run("anomaly", [q], [info], PostContext(input_tensor=original)).top_score
    assert score is not None and 0 < score <= (scale / 2) ** 2


def test_anomaly_reconstruction_needs_a_matching_input() -> None:
    recon = np.zeros((1, 6), np.float32)
    with pytest.raises(ValueError, match="input_tensor"):
        run("anomaly", [recon])
    with pytest.raises(ValueError, match="has 6 values but the input has 4"):
        run("anomaly", [recon], context=PostContext(input_tensor=np.zeros(4, np.float32)))


@pytest.mark.parametrize(
    ("stats", "expected"),
    [
        ({"threshold": 0.7, "p99": 0.9}, 0.7),
        ({"p99": 0.9, "mean": 0.1, "std": 0.1}, 0.9),
        ({"mean": 0.1, "std": 0.05}, 0.25),
        ({"score": {"p99": 0.42}}, 0.42),
        ({"anomaly": {"threshold": 0.3}, "threshold": 0.9}, 0.3),
        ({"mean": 0.1}, None),
        ([1, 2], None),
    ],
)
def test_threshold_from_reference_stats(stats: object, expected: float | None) -> None:
    found = threshold_from_stats(stats)
    assert found == (None if expected is None else pytest.approx(expected))


def test_anomaly_threshold_param_wins_over_reference_stats() -> None:
    array = [np.array([0.5], np.float32)]
    assert run("anomaly", array, reference_stats={"p99": 0.4}).payload["anomaly"]["is_anomaly"]
    outcome = run("anomaly", array, threshold=0.6, reference_stats={"p99": 0.4})
    assert outcome.payload["anomaly"]["threshold"] == 0.6


def test_anomaly_setup_errors() -> None:
    two = [OutputInfo("a", (1, 1), "float32"), OutputInfo("b", (1, 1), "float32")]
    with pytest.raises(ValueError, match="one output"):
        build_postprocessor("anomaly", two, [])
    with pytest.raises(ValueError, match="threshold"):
        build_postprocessor("anomaly", two[:1], [], {"threshold": "high"})
