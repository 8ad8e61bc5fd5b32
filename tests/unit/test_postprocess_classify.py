from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_runtime.postprocess import Outcome, OutputInfo, PostContext, build_postprocessor
from edge_runtime.postprocess.classify import looks_like_probabilities, softmax

LABELS = ["cat", "dog", "bird", "fish"]


def quantize(values: np.ndarray, scale: float, zero_point: int, dtype: type) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale) + zero_point, info.min, info.max).astype(dtype)


def classify(scores: np.ndarray, labels: list[str] = LABELS, info: OutputInfo | None = None,
             **params: object) -> Outcome:
    info = info or OutputInfo("scores", tuple(scores.shape), str(scores.dtype))
    post = build_postprocessor("classification", [info], labels, params)
    return post([scores], PostContext())


def test_probabilities_give_top_three_sorted_with_labels() -> None:
    outcome = classify(np.array([[0.1, 0.6, 0.05, 0.25]], dtype=np.float32))
    preds = outcome.payload["predictions"]
    assert [p["label"] for p in preds] == ["dog", "fish", "cat"]
    assert [p["index"] for p in preds] == [1, 3, 0]
    assert preds[0]["score"] == pytest.approx(0.6)
    assert (outcome.task, outcome.top_label, outcome.top_index) == ("classification", "dog", 1)
    assert outcome.top_score == pytest.approx(0.6)


def test_logits_are_softmaxed() -> None:
    logits = np.array([[2.0, -1.0, 0.5, 3.0]], dtype=np.float32)
    outcome = classify(logits, top_k=4)
    expected = np.exp(logits[0]) / np.exp(logits[0]).sum()
    scores = {p["index"]: p["score"] for p in outcome.payload["predictions"]}
    for index, value in enumerate(expected):
        assert scores[index] == pytest.approx(value, abs=1e-4)
    assert outcome.top_label == "fish"


def test_int8_softmax_output_is_dequantized_not_softmaxed_again() -> None:
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(size=1000).astype(np.float32) * 3)
    scale, zero_point = 1 / 256, -128
    q = quantize(probs, scale, zero_point, np.int8)[None, :]
    info = OutputInfo("probs", (1, 1000), "int8", scale, zero_point)
    outcome = classify(q, [], info, top_k=1)
    best = int(np.argmax(probs))
    assert outcome.top_index == best
    assert outcome.top_label == str(best)
    assert outcome.top_score == pytest.approx(probs[best], abs=scale)


@pytest.mark.parametrize(("dtype", "zero_point"), [(np.int8, -128), (np.uint8, 0)])
def test_independent_sigmoid_scores_quantized_as_probabilities_are_not_softmaxed(
        dtype: type, zero_point: int) -> None:
    """Several sigmoid outputs need not sum to 1; TFLite's [0, 1) quantization says what they
    are."""
    scores = np.array([0.9, 0.8, 0.1, 0.05], dtype=np.float32)
    scale = 1 / 256
    q = quantize(scores, scale, zero_point, dtype)[None, :]
    info = OutputInfo("scores", (1, 4), np.dtype(dtype).name, scale, zero_point)
    outcome = classify(q, info=info, top_k=4)
    got = sorted(outcome.payload["predictions"], key=lambda p: p["index"])
    assert [p["score"] for p in got] == pytest.approx(scores.tolist(), abs=scale)
    # The same scores from a float output do not look like probabilities, and are softmaxed.
    softened = classify(scores[None, :], top_k=1)
    assert softened.top_score == pytest.approx(float(softmax(scores)[0]), abs=1e-4)


def test_uint8_logits_are_dequantized_then_softmaxed() -> None:
    logits = np.array([1.0, 4.0, -2.0, 0.0], dtype=np.float32)
    scale, zero_point = 0.05, 128
    q = quantize(logits, scale, zero_point, np.uint8)[None, :]
    info = OutputInfo("logits", (1, 4), "uint8", scale, zero_point)
    outcome = classify(q, info=info, top_k=4)
    expected = softmax(logits)
    got = sorted(outcome.payload["predictions"], key=lambda p: p["index"])
    assert [p["score"] for p in got] == pytest.approx(expected.tolist(), abs=1e-3)


def test_softmax_can_be_forced_or_disabled() -> None:
    probs = np.array([[0.1, 0.7, 0.1, 0.1]], dtype=np.float32)
    forced = classify(probs, softmax=True)
    assert forced.top_score == pytest.approx(float(softmax(probs[0])[1]), abs=1e-4)
    logits = np.array([[3.0, 1.0, 2.0, 0.0]], dtype=np.float32)
    raw = classify(logits, softmax="false")
    assert raw.top_score == pytest.approx(3.0)


def test_single_logit_gets_a_sigmoid() -> None:
    outcome = classify(np.array([[2.0]], dtype=np.float32), ["positive"])
    assert outcome.top_score == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-4)
    assert outcome.top_label == "positive"


def test_missing_labels_fall_back_to_the_index() -> None:
    outcome = classify(np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32), ["a", "b"], top_k=4)
    assert [p["label"] for p in outcome.payload["predictions"]] == ["3", "2", "b", "a"]


def test_top_k_larger_than_classes_returns_all() -> None:
    outcome = classify(np.array([[0.5, 0.5]], dtype=np.float32), ["x", "y"], top_k=10)
    assert [p["index"] for p in outcome.payload["predictions"]] == [0, 1]


def test_payload_is_compact_json() -> None:
    outcome = classify(np.array([[0.123456789, 0.876543211, 0.0, 0.0]], dtype=np.float32))
    text = json.dumps(outcome.payload)
    assert json.loads(text)["predictions"][0]["score"] == pytest.approx(0.87654, abs=1e-5)
    assert len(str(outcome.payload["predictions"][0]["score"])) <= 7


def test_looks_like_probabilities() -> None:
    assert looks_like_probabilities(np.array([0.2, 0.8], np.float32))
    assert not looks_like_probabilities(np.array([0.2, 0.2], np.float32))
    assert not looks_like_probabilities(np.array([-0.1, 1.1], np.float32))


@pytest.mark.parametrize(
    ("outputs", "params", "message"),
    [
        (2, {}, "one output"),
        (1, {"top_k": 0}, "top_k"),
        (1, {"top_k": "3"}, "top_k"),
        (1, {"softmax": "maybe"}, "softmax"),
    ],
)
def test_bad_setup_is_refused(outputs: int, params: dict[str, object], message: str) -> None:
    infos = [OutputInfo(f"o{i}", (1, 4), "float32") for i in range(outputs)]
    with pytest.raises(ValueError, match=message):
        build_postprocessor("classification", infos, LABELS, params)


@settings(max_examples=60, deadline=None)
@given(
    scores=arrays(np.float32, st.integers(1, 40),
                  elements=st.floats(-20, 20, width=32, allow_nan=False)),
    k=st.integers(1, 8),
)
def test_predictions_are_sorted_unique_probabilities(scores: np.ndarray, k: int) -> None:
    outcome = classify(scores[None, :], [], top_k=k)
    preds = outcome.payload["predictions"]
    values = [p["score"] for p in preds]
    assert len(preds) == min(k, scores.size)
    assert values == sorted(values, reverse=True)
    assert len({p["index"] for p in preds}) == len(preds)
    assert all(0.0 <= v <= 1.0 for v in values)
    assert outcome.top_index == preds[0]["index"]
