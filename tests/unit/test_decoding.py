"""Decoding less where the format allows, and hardware decoding that falls back to software."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.sources import SourceOptions, open_source
from edge_runtime.sources.decoders import (
    gstreamer_pipeline,
    open_capture,
    wanted_hw_decoder,
)
from edge_runtime.sources.jpeg import JpegDecoder, jpeg_header, reduction


def jpeg(width: int, height: int, gray: bool = False) -> bytes:
    rng = np.random.default_rng(0)
    shape = (height, width) if gray else (height, width, 3)
    image = cv2.GaussianBlur(rng.integers(0, 255, shape, dtype=np.uint8), (9, 9), 3)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return data.tobytes()


@pytest.mark.parametrize(("frame", "target", "factor"), [
    ((1280, 720), (224, 224), 4),    # 320x180: the model's area, 0.8 of its height
    ((640, 480), (224, 224), 2),     # 320x240
    ((1920, 1080), (224, 224), 4),   # 480x270; 1/8 (240x135) would be far too small
    ((1920, 1080), (96, 96), 8),
    ((300, 300), (224, 224), 1),     # no reduction keeps enough pixels
    ((1280, 720), None, 1),
])
def test_the_largest_reduction_that_keeps_the_model_fed(frame: tuple[int, int],
                                                        target: tuple[int, int] | None,
                                                        factor: int) -> None:
    assert reduction(frame, target) == factor


def test_the_frame_header_gives_size_and_components() -> None:
    assert jpeg_header(jpeg(200, 120)) == (200, 120, 3)
    assert jpeg_header(jpeg(64, 48, gray=True)) == (64, 48, 1)
    assert jpeg_header(b"\x89PNG\r\n") is None
    assert jpeg_header(b"\xff\xd8\xff\xda\x00\x02") is None


def test_a_large_frame_is_decoded_reduced_and_resembles_the_full_one() -> None:
    data = jpeg(1280, 720)
    decoder = JpegDecoder((224, 224))
    reduced = decoder(data)
    assert reduced is not None and reduced.shape == (180, 320, 3)
    assert decoder.factor == 4
    full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    small = cv2.resize(full, (320, 180), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - reduced.astype(int)).mean() < 3


def test_full_decoding_when_asked_and_gray_stays_gray() -> None:
    assert JpegDecoder((224, 224), full=True)(jpeg(1280, 720)).shape == (720, 1280, 3)
    assert JpegDecoder((32, 32))(jpeg(256, 256, gray=True)).shape == (32, 32)
    assert JpegDecoder((32, 32))(b"not a jpeg") is None


def test_an_image_folder_decodes_large_jpegs_reduced(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg(1280, 720))
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((720, 1280, 3), np.uint8))
    source = open_source(str(tmp_path), SourceOptions(target=(224, 224)))
    source.open()
    first, second = source.read(), source.read()
    assert first is not None and second is not None
    assert first.data.shape == (180, 320, 3) and first.ref == "a.jpg"
    assert second.data.shape == (720, 1280, 3)   # PNG has no reduced decoding
    assert source.decoding["decoder"] == "software"


def test_the_hardware_decoder_comes_from_the_config_or_else_the_profile() -> None:
    assert wanted_hw_decoder(SourceOptions()) is None
    assert wanted_hw_decoder(SourceOptions(hw_decoder="v4l2m2m")) == "v4l2m2m"
    assert wanted_hw_decoder(SourceOptions(decode="full", hw_decoder="v4l2m2m")) is None
    assert wanted_hw_decoder(SourceOptions(decode="nvv4l2")) == "nvv4l2"
    assert wanted_hw_decoder(SourceOptions(hw_decoder="software")) is None


def test_gstreamer_pipelines_for_files_and_rtsp() -> None:
    assert "filesrc" in (gstreamer_pipeline("/v/a.mp4") or "")
    assert "matroskademux" in (gstreamer_pipeline("/v/a.mkv") or "")
    assert "rtspsrc" in (gstreamer_pipeline("rtsp://cam/1") or "")
    assert gstreamer_pipeline("http://cam/1") is None


def h264_clip(path: Path, frames: int = 5) -> Path:
    av = pytest.importorskip("av")
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(frames):
            image = np.full((120, 160, 3), i * 40, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("decoder", ["v4l2m2m", "nvv4l2"])
def test_a_missing_hardware_decoder_falls_back_to_software_with_a_note(
        tmp_path: Path, decoder: str) -> None:
    # Neither decoder exists on a test host: this is the fallback path every board without one
    # (or with an OpenCV built without it) takes.
    clip = h264_clip(tmp_path / "clip.mp4")
    decoding: dict[str, object] = {}
    capture, jpeg_decoder = open_capture(str(clip), SourceOptions(decode=decoder), decoding,
                                         "video clip.mp4")
    try:
        assert capture.isOpened() and capture.read()[0]
    finally:
        capture.release()
    assert jpeg_decoder is None
    assert decoding["decoder"] == "software"
    assert decoding["requested"] == decoder
    assert "decoding in software" in str(decoding["note"])


def test_a_video_source_reports_its_fallback(tmp_path: Path) -> None:
    clip = h264_clip(tmp_path / "clip.mp4")
    source = open_source(str(clip), SourceOptions(hw_decoder="v4l2m2m"))
    source.open()
    try:
        frame = source.read()
    finally:
        source.close()
    assert frame is not None and frame.data.shape == (120, 160, 3)
    assert source.decoding["requested"] == "v4l2m2m"


def written_clip(path: Path, fourcc: str, size: tuple[int, int], frames: int = 3) -> Path:
    """A clip of ``frames`` flat gray frames, 0, 60, 120 … bright."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), 10, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 60 * i, np.uint8))
    writer.release()
    return path


def test_an_mjpeg_video_is_decoded_from_its_packets_reduced(tmp_path: Path) -> None:
    path = written_clip(tmp_path / "clip.avi", "MJPG", (640, 480))
    source = open_source(str(path), SourceOptions(target=(100, 100)))
    source.open()
    try:
        frames = [source.read() for _ in range(3)]
    finally:
        source.close()
    assert all(f is not None and f.data.shape == (120, 160, 3) for f in frames)
    assert source.decoding["jpeg_scale"] == "reduced"
    assert abs(int(frames[2].data.mean()) - 120) <= 2  # type: ignore[union-attr]


def test_a_looped_mjpeg_video_starts_over_reduced(tmp_path: Path) -> None:
    path = written_clip(tmp_path / "clip.avi", "MJPG", (640, 480))
    source = open_source(str(path), SourceOptions(target=(100, 100), loop=True))
    source.open()
    try:
        frames = [source.read() for _ in range(7)]
    finally:
        source.close()
    assert [f.ref for f in frames if f is not None] == ["0", "1", "2", "0", "1", "2", "0"]
    means = [int(f.data.mean()) for f in frames if f is not None]
    assert all(abs(m - e) <= 2 for m, e in zip(means, [0, 60, 120] * 2 + [0], strict=True))


@pytest.mark.parametrize(("asked", "expected"), [(None, 1), (2, 2)])
def test_software_video_decoding_runs_on_the_threads_asked_for(
        tmp_path: Path, asked: int | None, expected: int) -> None:
    # FFmpeg would take a thread per core (and a frame of delay per extra thread) by default.
    clip = written_clip(tmp_path / "clip.mp4", "mp4v", (320, 240))
    options = SourceOptions() if asked is None else SourceOptions(decode_threads=asked)
    source = open_source(str(clip), options)
    source.open()
    try:
        frames = [source.read() for _ in range(3)]
    finally:
        source.close()
    assert all(f is not None and f.data.shape == (240, 320, 3) for f in frames)
    assert source.decoding == {"decoder": "software", "threads": expected}


def test_a_stream_keeps_ffmpegs_own_decoding_threads_unless_told(tmp_path: Path) -> None:
    # A camera's stream must be decoded as fast as it comes: one core may not keep up.
    clip = str(written_clip(tmp_path / "clip.mp4", "mp4v", (320, 240)))
    own = cv2.VideoCapture(clip, cv2.CAP_FFMPEG)
    ffmpeg_default = int(own.get(cv2.CAP_PROP_N_THREADS))
    own.release()
    for options, expected in ((SourceOptions(), ffmpeg_default),
                              (SourceOptions(decode_threads=1), 1)):
        decoding: dict[str, object] = {}
        capture, _ = open_capture(clip, options, decoding, "stream", live=True)
        capture.release()
        assert decoding["threads"] == expected


def test_decode_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="decode_threads must be positive"):
        SourceOptions(decode_threads=0)
