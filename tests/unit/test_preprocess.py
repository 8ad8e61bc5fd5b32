"""The shared pixel → input-tensor function: values, colour order, resizing, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_runtime.preprocess import (
    LETTERBOX_PAD,
    InputSpec,
    Preprocessor,
    as_tuple,
    letterbox,
    letterbox_to_source,
    preprocess,
    preprocess_batch,
)


def quantize_reference(pixels: np.ndarray, mean: float, std: float, scale: float, zero: int,
                       dtype: type[np.integer]) -> np.ndarray:
    """The textbook chain, written out independently of the lookup table."""
    info = np.iinfo(dtype)
    real = (pixels.astype(np.float64) - mean) / std
    return np.clip(np.round(real / scale) + zero, info.min, info.max).astype(dtype)


def gradient_bgr(height: int, width: int) -> np.ndarray:
    """A BGR image whose three channels differ everywhere, so any channel swap shows."""
    y, x = np.mgrid[0:height, 0:width]
    blue = (x * 255 // max(1, width - 1)).astype(np.uint8)
    green = (y * 255 // max(1, height - 1)).astype(np.uint8)
    red = (255 - blue // 2).astype(np.uint8)
    return np.dstack([blue, green, red])


# --- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "np_dtype", "scale", "zero"), [
    ("int8", np.int8, 1 / 255, -128),
    ("uint8", np.uint8, 1 / 255, 0),
    ("int8", np.int8, 0.02, 3),  # a range narrower than the data: values must clip, not wrap
])
def test_quantized_gray_input_matches_the_textbook_formula(
        dtype: str, np_dtype: type[np.integer], scale: float, zero: int) -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    spec = InputSpec(shape=(1, 16, 16, 1), dtype=dtype, color="GRAY", mean=(0.0,),
                     std=(255.0,), scale=scale, zero_point=zero)
    out = preprocess(pixels, spec)
    assert out.dtype == np_dtype and out.shape == (1, 16, 16, 1)
    expected = quantize_reference(pixels, 0.0, 255.0, scale, zero, np_dtype)
    np.testing.assert_array_equal(out[0, ..., 0], expected)


def test_float_input_applies_mean_and_std_per_channel_in_rgb_order() -> None:
    image = gradient_bgr(8, 8)
    spec = InputSpec(shape=(1, 8, 8, 3), color="RGB", mean=(10.0, 20.0, 30.0),
                     std=(2.0, 4.0, 8.0))
    out = preprocess(image, spec)[0]
    rgb = image[..., ::-1].astype(np.float64)
    expected = (rgb - np.array([10.0, 20.0, 30.0])) / np.array([2.0, 4.0, 8.0])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    image=arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24), st.just(3))),
    mean=st.floats(0, 255),
    std=st.floats(0.5, 300),
    scale=st.floats(1e-3, 0.5),
    zero=st.integers(-128, 127),
)
def test_lookup_table_and_float_paths_agree(image: np.ndarray, mean: float, std: float,
                                            scale: float, zero: int) -> None:
    """uint8 frames go through a table, float frames through arithmetic: same numbers."""
    spec = InputSpec(shape=(1, 12, 10, 3), dtype="int8", color="BGR", mean=(mean,),
                     std=(std,), scale=scale, zero_point=zero)
    pre = Preprocessor(spec)
    resized = cv2.resize(image, (10, 12), interpolation=cv2.INTER_LINEAR)
    via_table = pre(resized)
    via_float = pre(resized.astype(np.float32))
    np.testing.assert_array_equal(via_table, via_float)
    np.testing.assert_array_equal(
        via_table[0], quantize_reference(resized, mean, std, scale, zero, np.int8))


def test_writes_into_a_given_buffer() -> None:
    spec = InputSpec(shape=(1, 4, 4, 1), color="GRAY", std=(255.0,))
    buffer = np.full((1, 4, 4, 1), -1.0, dtype=np.float32)
    result = Preprocessor(spec)(np.full((4, 4), 255, np.uint8), out=buffer)
    assert result is buffer
    np.testing.assert_allclose(buffer, 1.0)


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize(("mean", "std"), [
    ((127.5,), (127.5,)),                           # one table for every channel
    ((123.7, 116.3, 103.5), (58.4, 57.1, 57.4)),    # a table per channel
])
def test_quantized_colour_input_is_written_in_place_channel_by_channel(
        dtype: str, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    np_dtype = np.dtype(dtype).type
    scale, zero = (0.0187, -14) if dtype == "int8" else (0.0187, 114)
    spec = InputSpec(shape=(1, 9, 11, 3), dtype=dtype, color="RGB", mean=mean, std=std,
                     scale=scale, zero_point=zero)
    image = gradient_bgr(9, 11)
    buffer = np.zeros(spec.shape, np_dtype)
    result = Preprocessor(spec)(image, out=buffer)
    assert result is buffer
    rgb = image[..., ::-1]
    for c in range(3):
        expected = quantize_reference(rgb[..., c], mean[c % len(mean)], std[c % len(std)],
                                      scale, zero, np_dtype)
        np.testing.assert_array_equal(buffer[0, ..., c], expected)


def test_batch_equals_one_item_at_a_time() -> None:
    spec = InputSpec(shape=(1, 6, 6, 3), dtype="int8", mean=(127.5,), std=(127.5,),
                     scale=1 / 128, zero_point=0)
    rng = np.random.default_rng(3)
    items = [rng.integers(0, 256, (9, 7, 3), dtype=np.uint8) for _ in range(5)]
    batch = preprocess_batch(items, spec)
    assert batch.shape == (5, 6, 6, 3) and batch.dtype == np.int8
    for i, item in enumerate(items):
        np.testing.assert_array_equal(batch[i], preprocess(item, spec)[0])


# --- colour -------------------------------------------------------------------------------------


def test_bgr_model_gets_frames_unchanged_rgb_model_gets_them_swapped() -> None:
    image = gradient_bgr(5, 5)
    bgr = preprocess(image, InputSpec(shape=(1, 5, 5, 3), color="BGR"))[0]
    rgb = preprocess(image, InputSpec(shape=(1, 5, 5, 3), color="RGB"))[0]
    np.testing.assert_array_equal(bgr, image.astype(np.float32))
    np.testing.assert_array_equal(rgb, image[..., ::-1].astype(np.float32))


def test_gray_model_gets_luma_of_a_colour_frame() -> None:
    image = gradient_bgr(6, 6)
    out = preprocess(image, InputSpec(shape=(1, 6, 6, 1), color="GRAY"))[0, ..., 0]
    luma = 0.114 * image[..., 0] + 0.587 * image[..., 1] + 0.299 * image[..., 2]
    assert np.max(np.abs(out - luma)) <= 1.0


def test_gray_frame_feeds_a_colour_model_on_every_channel() -> None:
    gray = np.arange(36, dtype=np.uint8).reshape(6, 6)
    out = preprocess(gray, InputSpec(shape=(1, 6, 6, 3), color="RGB"))[0]
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray.astype(np.float32))


def test_alpha_is_dropped_and_single_channel_frames_count_as_gray() -> None:
    image = gradient_bgr(4, 4)
    bgra = np.dstack([image, np.full((4, 4), 7, np.uint8)])
    spec = InputSpec(shape=(1, 4, 4, 3), color="BGR")
    np.testing.assert_array_equal(preprocess(bgra, spec), preprocess(image, spec))
    gray = image[..., :1]
    gray_spec = InputSpec(shape=(1, 4, 4, 1), color="GRAY")
    np.testing.assert_array_equal(preprocess(gray, gray_spec)[0, ..., 0], gray[..., 0])


# --- geometry -----------------------------------------------------------------------------------


def test_stretch_resizes_to_the_input_size_and_records_the_scale() -> None:
    pre = Preprocessor(InputSpec(shape=(1, 10, 20, 3), color="BGR"))
    out = pre(gradient_bgr(50, 40))
    assert out.shape == (1, 10, 20, 3)
    lb = pre.last_letterbox
    assert lb is not None
    assert (lb.scale_x, lb.scale_y, lb.pad_x, lb.pad_y) == (0.5, 0.2, 0.0, 0.0)


def test_letterbox_keeps_aspect_ratio_and_pads_evenly() -> None:
    image = np.full((50, 100, 3), 200, np.uint8)
    pre = Preprocessor(InputSpec(shape=(1, 64, 64, 3), color="BGR", resize="letterbox"))
    out = pre(image)[0]
    # 100x50 → 64x32, centred: 16 rows of padding above and below
    assert np.all(out[:16] == LETTERBOX_PAD) and np.all(out[48:] == LETTERBOX_PAD)
    assert np.all(out[16:48] == 200)
    lb = pre.last_letterbox
    assert lb is not None and (lb.pad_x, lb.pad_y) == (0.0, 16.0)


def test_letterbox_boxes_map_back_to_the_source_frame() -> None:
    _, lb = letterbox(np.zeros((300, 500, 3), np.uint8), 320, 320)
    source_box = np.array([0.1, 0.2, 0.6, 0.9])  # normalised to the 500x300 frame
    # where that box lands in the 320x320 model input
    x = (source_box[[0, 2]] * 500 * lb.scale_x + lb.pad_x) / 320
    y = (source_box[[1, 3]] * 300 * lb.scale_y + lb.pad_y) / 320
    on_input = np.array([[x[0], y[0], x[1], y[1]]])
    np.testing.assert_allclose(letterbox_to_source(on_input, lb, (320, 320))[0], source_box,
                               atol=1e-6)
    np.testing.assert_allclose(lb.to_source(on_input)[0], source_box, atol=1e-6)
    # a box reaching into the padding is clipped to the frame
    clipped = letterbox_to_source(np.array([[0.0, 0.0, 1.0, 1.0]]), lb, (320, 320))
    np.testing.assert_allclose(clipped[0], [0, 0, 1, 1])


def test_letterbox_with_odd_padding_maps_back_without_the_size_given() -> None:
    _, lb = letterbox(np.zeros((301, 500, 3), np.uint8), 320, 320)
    assert (320 - round(301 * lb.scale_y)) % 2 == 1  # one more row of padding below than above
    source_box = np.array([0.1, 0.2, 0.6, 0.9])
    x = (source_box[[0, 2]] * 500 * lb.scale_x + lb.pad_x) / 320
    y = (source_box[[1, 3]] * 301 * lb.scale_y + lb.pad_y) / 320
    on_input = np.array([[x[0], y[0], x[1], y[1]]])
    np.testing.assert_allclose(lb.to_source(on_input)[0], source_box, atol=1e-6)


# --- sensor windows -----------------------------------------------------------------------------


def test_sensor_window_is_normalised_per_channel() -> None:
    spec = InputSpec(shape=(1, 4, 2), mean=(1.0, 10.0), std=(2.0, 5.0))
    window = np.array([[1, 10], [3, 15], [5, 20], [7, 25]], dtype=np.float32)
    out = preprocess(window, spec)
    np.testing.assert_allclose(out[0], [[0, 0], [1, 1], [2, 2], [3, 3]])


def test_sensor_window_of_the_wrong_size_is_refused_with_both_sizes() -> None:
    spec = InputSpec(shape=(1, 4, 2))
    with pytest.raises(ValueError, match=r"has 6 values; the model takes 8"):
        preprocess(np.zeros((3, 2)), spec)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    (InputSpec(shape=(1, 4, 4, 3), std=(0.0,)), "std must not be zero"),
    (InputSpec(shape=(1, 4, 4, 3), mean=(1.0, 2.0)), "mean has 2 values but the input has 3"),
    (InputSpec(shape=(1, 4, 4, 1), color="RGB"), "color RGB needs 3 input channel"),
    (InputSpec(shape=(1, 4, 4, 3), color="GRAY"), "color GRAY needs 1 input channel"),
])
def test_impossible_specs_are_refused_up_front(spec: InputSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Preprocessor(spec)


@pytest.mark.parametrize(("frame", "message"), [
    (np.zeros(10, np.uint8), "not an image"),
    (np.zeros((0, 4, 3), np.uint8), "not an image"),
    (np.zeros((4, 4, 2), np.uint8), "has 2 channels"),
])
def test_frames_that_are_not_images_are_refused(frame: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preprocess(frame, InputSpec(shape=(1, 4, 4, 3)))


# --- the manifest's input section -------------------------------------------------------------


def test_manifest_round_trip_keeps_every_field() -> None:
    spec = InputSpec(shape=(1, 224, 224, 3), dtype="uint8", color="BGR", resize="letterbox",
                     mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4), scale=0.0078125,
                     zero_point=128)
    data = spec.to_manifest()
    assert data["mean"] == [123.7, 116.3, 103.5]
    assert data["quantization"] == {"scale": 0.0078125, "zero_point": 128}
    assert InputSpec.from_manifest(data) == spec


def test_scalar_mean_and_std_stay_scalars_in_the_manifest() -> None:
    data = InputSpec(shape=(1, 8, 8, 1), color="GRAY", mean=(0.0,), std=(255.0,)).to_manifest()
    assert data["mean"] == 0.0 and data["std"] == 255.0


def test_with_quantization_changes_only_the_quantization() -> None:
    base = InputSpec(shape=(1, 8, 8, 3), mean=(1.0,), std=(2.0,), resize="letterbox")
    quant = base.with_quantization("int8", 0.5, -3)
    assert quant.quantized and not base.quantized
    assert (quant.dtype, quant.scale, quant.zero_point) == ("int8", 0.5, -3)
    assert (quant.shape, quant.mean, quant.std, quant.resize) == \
        (base.shape, base.mean, base.std, base.resize)


@pytest.mark.parametrize(("value", "expected"), [
    (127.5, (127.5,)),
    (3, (3.0,)),
    ("0.5", (0.5,)),
    ("1,2,3", (1.0, 2.0, 3.0)),
    ("1 2 3", (1.0, 2.0, 3.0)),
    ([4, 5.5], (4.0, 5.5)),
])
def test_as_tuple_reads_numbers_and_lists(value: object, expected: tuple[float, ...]) -> None:
    assert as_tuple(value) == expected


def test_as_tuple_refuses_other_things() -> None:
    with pytest.raises(ValueError, match="expected a number or a list"):
        as_tuple({"mean": 1})
