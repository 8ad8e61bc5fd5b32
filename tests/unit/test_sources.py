"""Input sources on real files: images, a video, a CSV, stdin lines, a pseudo-terminal."""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.frames import Frame
from edge_runtime.redact import redact
from edge_runtime.sources import (
    SOURCE_KINDS,
    Source,
    SourceError,
    SourceOptions,
    WindowSpec,
    open_source,
    register_source,
)
from edge_runtime.sources.base import Pacer
from edge_runtime.sources.csv import CsvSource
from edge_runtime.sources.picam import yuv420_to_bgr
from edge_runtime.sources.serial import parse_serial_spec
from edge_runtime.sources.stdin import StdinSource, parse_json_readings
from edge_runtime.sources.window import Windower, parse_numbers


def read_all(source: Source, limit: int = 1000) -> list[Frame]:
    frames = []
    for _ in range(limit):
        frame = source.read()
        if frame is None:
            break
        frames.append(frame)
    return frames


def opened(spec: str, options: SourceOptions | None = None) -> Source:
    source = open_source(spec, options)
    source.open()
    return source


# --- image folders -----------------------------------------------------------------------------

@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(root / label / f"{i}.png"), rng.integers(0, 255, (12, 16, 3), np.uint8))
    cv2.imwrite(str(root / "dog" / "gray.jpg"), np.full((10, 10), 200, np.uint8))
    cv2.imwrite(str(root / "top.png"), np.zeros((4, 4, 3), np.uint8))
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"junk")
    return root


def test_image_folder_yields_each_image_once_sorted_with_labels(image_folder: Path) -> None:
    source = opened(str(image_folder))
    frames = read_all(source)
    assert [f.ref for f in frames] == [
        "cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png", "dog/gray.jpg", "top.png",
    ]
    assert [f.label for f in frames] == ["cat", "cat", "dog", "dog", "dog", None]
    assert [f.index for f in frames] == list(range(6))
    assert source.unreadable == 1
    assert source.read() is None
    assert not source.live


def test_image_folder_frames_are_the_file_pixels(image_folder: Path) -> None:
    frames = {f.ref: f for f in read_all(opened(str(image_folder)))}
    expected = cv2.imread(str(image_folder / "cat" / "1.png"))
    assert expected is not None
    assert np.array_equal(frames["cat/1.png"].data, expected)
    gray = frames["dog/gray.jpg"].data
    assert gray.ndim == 2 and gray.dtype == np.uint8


def test_image_folder_loop_restarts_and_skips_the_corrupt_file_quietly(image_folder: Path) -> None:
    source = opened(str(image_folder), SourceOptions(loop=True))
    frames = [source.read() for _ in range(14)]
    refs = [f.ref for f in frames if f is not None]
    assert refs[:6] == refs[6:12]
    assert refs[12] == "cat/0.png"
    assert frames[-1] is not None and frames[-1].index == 13
    assert source.unreadable == 1


def test_single_image_file_is_a_one_frame_source(image_folder: Path) -> None:
    frames = read_all(opened(str(image_folder / "top.png")))
    assert [(f.ref, f.label) for f in frames] == [("top.png", None)]


def test_folder_without_images_fails_to_open(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    source = open_source(str(tmp_path))
    with pytest.raises(SourceError, match="no images"):
        source.open()


def test_paced_folder_is_live(image_folder: Path) -> None:
    assert open_source(str(image_folder), SourceOptions(fps=5)).live


# --- video files -------------------------------------------------------------------------------

@pytest.fixture
def video_file(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10, (32, 24))
    assert writer.isOpened()
    for i in range(6):
        writer.write(np.full((24, 32, 3), 20 + 40 * i, np.uint8))
    writer.release()
    return path


def test_video_frames_in_order_then_end(video_file: Path) -> None:
    source = opened(str(video_file))
    frames = read_all(source)
    assert [f.ref for f in frames] == ["0", "1", "2", "3", "4", "5"]
    brightness = [float(f.data.mean()) for f in frames]
    assert brightness == sorted(brightness) and brightness[-1] - brightness[0] > 150
    assert frames[0].data.shape == (24, 32, 3) and frames[0].data.dtype == np.uint8
    assert source.read() is None
    assert not source.live
    source.close()


def test_video_loop_rewinds_and_keeps_counting(video_file: Path) -> None:
    source = opened(str(video_file), SourceOptions(loop=True))
    capture = source._capture   # type: ignore[attr-defined]
    frames = [source.read() for _ in range(9)]
    assert [f.ref for f in frames if f] == ["0", "1", "2", "3", "4", "5", "0", "1", "2"]
    assert [f.index for f in frames if f] == list(range(9))
    assert frames[0] is not None and frames[6] is not None
    assert np.array_equal(frames[6].data, frames[0].data)   # the first frame again
    assert source._capture is capture   # type: ignore[attr-defined]  # by seeking, not reopening
    source.close()


def test_a_paced_video_decodes_each_frame_at_its_tick(video_file: Path) -> None:
    # Decoded at its tick, as a camera's frame arrives: not straight after the previous frame
    # was handed over, while the pipeline is busy with that one.
    source = opened(str(video_file), SourceOptions(fps=0.2))
    assert source.read() is not None   # the first tick is at once
    capture = source._capture   # type: ignore[attr-defined]
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(source.read()))
    reader.start()
    time.sleep(0.2)   # well before the next tick, 5 s away
    assert capture.get(cv2.CAP_PROP_POS_FRAMES) == 1   # the second frame is not decoded yet
    source.interrupt()
    reader.join(5)
    assert got == [None]
    source.close()


def test_paced_video_is_live_and_an_interrupt_ends_the_wait(video_file: Path) -> None:
    source = opened(str(video_file), SourceOptions(fps=0.01))
    assert source.live
    assert source.read() is not None  # the first frame is not delayed
    source.interrupt()
    assert source.read() is None
    source.close()


def test_unreadable_video_file_fails_to_open(tmp_path: Path) -> None:
    path = tmp_path / "fake.mp4"
    path.write_bytes(b"this is not a video")
    with pytest.raises(SourceError, match=r"fake\.mp4"):
        opened(str(path))


# --- spec parsing --------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "kind", "live"), [
    ("0", "camera", True),
    ("/dev/video2", "camera", True),
    ("rtsp://user:secret@cam.local:554/stream", "stream", True),
    ("http://cam.local/video.mjpg", "stream", True),
    ("https://cam.local/live", "stream", True),
    ("picamera2", "picamera2", True),
    ("serial:///dev/ttyUSB0?baud=115200", "serial", True),
    ("-", "stdin", False),
])
def test_open_source_picks_the_kind(spec: str, kind: str, live: bool) -> None:
    source = open_source(spec)
    assert (source.kind, source.live) == (kind, live)


def test_open_source_resolves_paths_against_base_dir(image_folder: Path,
                                                      video_file: Path) -> None:
    options = SourceOptions(base_dir=image_folder.parent)
    assert open_source("images", options).kind == "images"
    assert open_source("clip.mp4", options).kind == "video"
    (image_folder.parent / "data.csv").write_text("1\n")
    assert open_source("csv:data.csv", options).kind == "csv"


@pytest.mark.parametrize(("spec", "message"), [
    ("no/such/folder", "no/such/folder"),
    ("ftp://example.com/x", "ftp://example.com/x"),
    ("csv:/no/such/file.csv", "/no/such/file.csv"),
    ("serial:///dev/ttyUSB0?baud=fast", "baud"),
    ("serial:///dev/ttyUSB0?speed=9600", "speed"),
    ("", "empty source"),
])
def test_bad_specs_name_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        open_source(spec)


def test_unsupported_file_type_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model.tflite"
    model.write_bytes(b"\x00")
    with pytest.raises(SourceError, match="unsupported file type"):
        open_source(str(model))


def test_missing_camera_is_an_open_error_not_a_parse_error() -> None:
    source = open_source("/dev/video99")
    with pytest.raises(SourceError, match="camera /dev/video99 not found"):
        source.open()


def test_missing_picamera2_is_one_clear_error() -> None:
    if "picamera2" in sys.modules or _importable("picamera2"):
        pytest.skip("picamera2 is installed here")
    with pytest.raises(SourceError, match="picamera2 is not installed"):
        open_source("picamera2").open()


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_stream_description_hides_the_password() -> None:
    assert redact("rtsp://admin:hunter2@10.0.0.5:554/s") == "rtsp://admin:***@10.0.0.5:554/s"
    assert "hunter2" not in open_source("rtsp://admin:hunter2@cam/s").describe()
    assert redact("http://cam/x") == "http://cam/x"


def test_serial_spec_parsing() -> None:
    assert parse_serial_spec("serial:///dev/ttyACM0?baud=9600") == ("/dev/ttyACM0", 9600)
    assert parse_serial_spec("serial:///dev/ttyUSB1") == ("/dev/ttyUSB1", 115200)


def test_a_registered_kind_is_used(tmp_path: Path) -> None:
    class EchoSource(StdinSource):
        kind = "echo"

        @classmethod
        def from_spec(cls, spec: str, options: SourceOptions) -> EchoSource | None:
            return cls(io.StringIO(spec[5:]), options) if spec.startswith("echo:") else None

    register_source("echo", EchoSource)
    try:
        source = opened("echo:[1, 2]")
        frame = source.read()
        assert source.kind == "echo" and frame is not None
        assert frame.data.tolist() == [[1.0, 2.0]]
    finally:
        SOURCE_KINDS.pop("echo", None)


# --- sensor windows ------------------------------------------------------------------------------

def test_windower_overlapping_windows() -> None:
    windower = Windower(WindowSpec(size=4, stride=2, channels=1))
    done = [windower.push([float(i)]) for i in range(9)]
    windows = [(start, w[:, 0].tolist()) for start, w in (d for d in done if d is not None)]
    assert windows == [
        (0, [0, 1, 2, 3]), (2, [2, 3, 4, 5]), (4, [4, 5, 6, 7]),
    ]


def test_windower_stride_longer_than_window_skips_readings() -> None:
    windower = Windower(WindowSpec(size=2, stride=3, channels=1))
    done = [windower.push([float(i)]) for i in range(8)]
    windows = [(start, w[:, 0].tolist()) for start, w in (d for d in done if d is not None)]
    assert windows == [(0, [0, 1]), (3, [3, 4]), (6, [6, 7])]


def test_windower_rejects_a_reading_with_the_wrong_channel_count() -> None:
    windower = Windower(WindowSpec(size=2, channels=3))
    with pytest.raises(ValueError, match="2 values; expected 3"):
        windower.push([1.0, 2.0])
    assert windower.push([1.0, 2.0, 3.0]) is None
    result = windower.push([4.0, 5.0, 6.0])
    assert result is not None
    start, window = result
    assert start == 0 and window.shape == (2, 3) and window.dtype == np.float32


def test_windower_without_spec_is_one_reading_per_window() -> None:
    windower = Windower()
    first = windower.push([1.0, 2.0])
    assert first is not None and first[1].shape == (1, 2)
    with pytest.raises(ValueError):
        windower.push([1.0])


def test_window_spec_defaults_and_validation() -> None:
    assert WindowSpec(size=5, channels=2).stride == 5
    with pytest.raises(ValueError, match="size"):
        WindowSpec(size=0)


def test_parse_numbers_accepts_common_sensor_line_formats() -> None:
    assert parse_numbers("1.5, -2 ,3e2") == [1.5, -2.0, 300.0]
    assert parse_numbers("1 2\t3") == [1.0, 2.0, 3.0]
    assert parse_numbers("ax:0.1,ay:0.2") == [0.1, 0.2]
    for bad in ("1,x", "nan,1", ""):
        with pytest.raises(ValueError):
            parse_numbers(bad)


def test_csv_skips_header_and_time_column_and_counts_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "accel.csv"
    rows = [f"{1000 + 10 * i},{i},{-i}" for i in range(7)]
    rows.insert(3, "1030,oops,1")
    path.write_text("timestamp,x,y\n" + "\n".join(rows) + "\n")
    source = opened(f"csv:{path}", SourceOptions(window=WindowSpec(size=3, stride=2, channels=2)))
    frames = read_all(source)
    assert [f.ref for f in frames] == ["0", "2", "4"]
    assert frames[1].data.tolist() == [[2, -2], [3, -3], [4, -4]]
    assert frames[0].data.dtype == np.float32
    assert source.unreadable == 1


def test_csv_loop_starts_windows_over(tmp_path: Path) -> None:
    path = tmp_path / "v.csv"
    path.write_text("value\n1\n2\n3\n")
    source = opened(f"csv:{path}", SourceOptions(loop=True, window=WindowSpec(size=2)))
    frames = [source.read() for _ in range(3)]
    assert [f.data[:, 0].tolist() for f in frames if f] == [[1, 2], [1, 2], [1, 2]]
    assert isinstance(source, CsvSource) and source.live is False


def test_stdin_json_lines_in_every_shape() -> None:
    lines = "\n".join([
        "1.5",
        "[2, 20]",
        '{"values": [3, 30]}',
        "[[4, 40], [5, 50]]",
        "not json at all",
        "",
        "[true, 1]",
        "6 60",
    ]) + "\n"
    source = StdinSource(io.StringIO(lines), SourceOptions(window=WindowSpec(size=1, channels=2)))
    source.open()
    frames = read_all(source)
    assert [f.data.tolist() for f in frames] == [
        [[2, 20]], [[3, 30]], [[4, 40]], [[5, 50]], [[6, 60]],
    ]
    assert [f.ref for f in frames] == ["0", "1", "2", "3", "4"]
    assert source.unreadable == 3  # the lone number (1 channel), the text, the boolean


def test_stdin_windows_with_stride() -> None:
    stream = io.StringIO("".join(f"{i}\n" for i in range(10)))
    source = StdinSource(stream, SourceOptions(window=WindowSpec(size=4, stride=3, channels=1)))
    source.open()
    frames = read_all(source)
    assert [(f.ref, f.data[:, 0].tolist()) for f in frames] == [
        ("0", [0, 1, 2, 3]), ("3", [3, 4, 5, 6]), ("6", [6, 7, 8, 9]),
    ]


def test_parse_json_readings_rejects_non_numbers() -> None:
    assert parse_json_readings('{"values": 7}') == [[7.0]]
    for bad in ('{"value": [1]}', "[]", '["a"]', "[1e999]"):
        with pytest.raises(ValueError):
            parse_json_readings(bad)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_serial_reads_lines_from_a_real_tty() -> None:
    master, slave = os.openpty()
    try:
        port = os.ttyname(slave)
        options = SourceOptions(window=WindowSpec(size=2, channels=3))
        source = opened(f"serial://{port}?baud=9600", options)
        # The first line after opening may be a fragment, so the source drops it.
        lines = ["7,7,7", "1,2,3", "x:4 y:5 z:6", "oops", "7;8;9", "10,11,12"]
        os.write(master, ("\n".join(lines) + "\n").encode())
        first, second = source.read(), source.read()
        assert first is not None and second is not None
        assert first.data.tolist() == [[1, 2, 3], [4, 5, 6]]
        assert second.data.tolist() == [[7, 8, 9], [10, 11, 12]]
        assert (first.ref, second.ref) == ("0", "2")
        assert source.unreadable == 1 and source.live
        source.close()
    finally:
        os.close(master)
        os.close(slave)


def test_serial_interrupt_ends_a_quiet_read() -> None:
    master, slave = os.openpty()
    try:
        source = opened(f"serial://{os.ttyname(slave)}")
        timer = threading.Timer(0.3, source.interrupt)
        timer.start()
        assert source.read() is None
        timer.join()
        source.close()
    finally:
        os.close(master)
        os.close(slave)


def test_missing_serial_port_fails_to_open() -> None:
    with pytest.raises(SourceError, match="/dev/ttyNOPE0"):
        opened("serial:///dev/ttyNOPE0")


# --- helpers -------------------------------------------------------------------------------------

def test_pacer_without_fps_never_waits_and_stops_when_interrupted() -> None:
    stop = threading.Event()
    pacer = Pacer(None, stop)
    assert all(pacer.wait() for _ in range(1000))
    stop.set()
    assert not Pacer(2.0, stop).wait()


def test_yuv420_lores_buffer_with_row_padding_becomes_bgr() -> None:
    # A 24-pixel-wide picture in rows padded to a 32-byte stride, as the ISP hands them out.
    padded = np.zeros((16, 32, 3), np.uint8)
    padded[:, :12] = (255, 0, 0)
    padded[:, 12:24] = (0, 0, 255)
    yuv = cv2.cvtColor(padded, cv2.COLOR_BGR2YUV_I420)
    back = yuv420_to_bgr(yuv, 24)
    assert back.shape == (16, 24, 3)
    assert np.abs(back.astype(int) - padded[:, :24].astype(int)).max() < 40
