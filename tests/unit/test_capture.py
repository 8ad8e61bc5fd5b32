"""The capture stage: newest-frame slot, lossless hand-off, reopening with back-off, prompt stop."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.frames import Frame
from edge_runtime.sources import Source, SourceError, SourceOptions, WindowSpec, open_source
from edge_runtime.sources.capture import (
    Capture,
    LatestFrameSlot,
    LosslessHandOff,
)
from edge_runtime.sources.stdin import StdinSource

FAST = (0.01, 0.04)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def frame(index: int) -> Frame:
    return Frame(index=index, ref=str(index), captured_at=time.time(),
                 data=np.zeros((2, 2), np.uint8))


def drain(capture: Capture, delay: float = 0.0) -> list[Frame]:
    frames = []
    while not capture.finished:
        got = capture.get(timeout=1.0)
        if got is not None:
            frames.append(got)
            time.sleep(delay)
    return frames


class CountingSource(Source):
    """``total`` frames as fast as they are asked for, then the end."""

    kind = "fake"

    def __init__(self, total: int, live: bool) -> None:
        super().__init__()
        self.total = total
        self.live = live
        self.closed = 0

    def open(self) -> None:
        pass

    def read(self) -> Frame | None:
        if self._next_index >= self.total:
            return None
        return self._make_frame(np.full((2, 2), self._next_index % 256, np.uint8))

    def close(self) -> None:
        self.closed += 1

    def describe(self) -> str:
        return "fake counter"


class FlakyCamera(Source):
    """A device that fails to open ``open_failures`` times, then fails after every ``burst``."""

    kind = "fake"
    live = True
    retry_on_error = True

    def __init__(self, open_failures: int, burst: int | None = None,
                 error: type[Exception] = SourceError) -> None:
        super().__init__()
        self.open_failures = open_failures
        self.burst = burst
        self.error = error
        self.opens = 0
        self._since_open = 0

    def open(self) -> None:
        self.opens += 1
        if self.opens <= self.open_failures:
            raise SourceError("camera fake0: cannot open")
        self._since_open = 0

    def read(self) -> Frame | None:
        if self.burst is not None and self._since_open >= self.burst:
            raise self.error("camera fake0: read failed")
        self._since_open += 1
        time.sleep(0.001)
        return self._make_frame(np.zeros((2, 2), np.uint8))

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "camera fake0"


class StuckCamera(Source):
    """A driver read that ignores interrupts until the test releases it."""

    kind = "fake"
    live = True
    retry_on_error = True

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.reading = threading.Event()

    def open(self) -> None:
        pass

    def read(self) -> Frame | None:
        self.reading.set()
        self.release.wait()
        return None

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "camera stuck"


def stop_returns(capture: Capture) -> bool:
    stopper = threading.Thread(target=capture.stop)
    stopper.start()
    stopper.join(5.0)
    return not stopper.is_alive()


# --- the hand-offs -------------------------------------------------------------------------------

def test_slot_keeps_only_the_newest_frame_and_counts_the_rest() -> None:
    slot = LatestFrameSlot()
    for i in range(5):
        assert slot.put(frame(i))
    assert len(slot) == 1 and slot.dropped == 4
    taken = slot.get(0.1)
    assert taken is not None and taken.index == 4
    assert slot.get(0.01) is None


def test_lossless_hand_off_blocks_the_reader_until_the_consumer_takes() -> None:
    handoff = LosslessHandOff(capacity=2)
    assert handoff.put(frame(0)) and handoff.put(frame(1))
    third_in = threading.Event()

    def put_third() -> None:
        handoff.put(frame(2))
        third_in.set()

    threading.Thread(target=put_third, daemon=True).start()
    assert not third_in.wait(0.2)
    assert len(handoff) == 2
    first = handoff.get(1.0)
    assert first is not None and first.index == 0
    assert third_in.wait(5.0)
    assert [f.index for f in (handoff.get(1.0), handoff.get(1.0)) if f] == [1, 2]
    assert handoff.dropped == 0


def test_closing_the_lossless_hand_off_frees_a_blocked_reader() -> None:
    handoff = LosslessHandOff(capacity=1)
    handoff.put(frame(0))
    result: list[bool] = []
    reader = threading.Thread(target=lambda: result.append(handoff.put(frame(1))), daemon=True)
    reader.start()
    handoff.close()
    reader.join(5.0)
    assert result == [False]


def test_backoff_range_is_validated() -> None:
    with pytest.raises(ValueError, match="reopen_backoff"):
        Capture(CountingSource(1, live=True), reopen_backoff=(5.0, 1.0))


# --- live sources: newest frame wins -------------------------------------------------------------

def test_live_capture_never_builds_a_backlog() -> None:
    source = CountingSource(500, live=True)
    capture = Capture(source)
    capture.start()
    assert wait_until(lambda: capture.stats["captured"] == 500)
    frames = drain(capture)
    assert [f.index for f in frames] == [499]
    assert capture.stats == {"captured": 500, "dropped": 499, "unreadable": 0, "reopens": 0}
    assert capture.finished and capture.get(0.01) is None
    capture.stop()
    assert source.closed >= 1


def test_live_capture_with_a_slow_consumer_gets_fresh_frames_in_order() -> None:
    capture = Capture(FlakyCamera(open_failures=0))
    capture.start()
    frames = []
    for _ in range(5):
        got = capture.get(timeout=5.0)
        assert got is not None
        frames.append(got)
        time.sleep(0.02)
    capture.stop()
    indexes = [f.index for f in frames]
    assert indexes == sorted(indexes) and len(set(indexes)) == 5
    assert capture.stats["dropped"] > 0
    stats = capture.stats
    assert stats["captured"] >= len(frames) + stats["dropped"]


# --- lossless sources: every frame gets a result -------------------------------------------------

def test_lossless_capture_delivers_every_frame_to_a_slow_consumer() -> None:
    capture = Capture(CountingSource(30, live=False))
    capture.start()
    frames = drain(capture, delay=0.005)
    assert [f.index for f in frames] == list(range(30))
    assert capture.stats["dropped"] == 0 and capture.stats["captured"] == 30
    assert capture.error is None


def test_lossless_capture_of_a_real_image_folder(tmp_path: Path) -> None:
    for i in range(5):
        folder = tmp_path / f"class_{i % 2}"
        folder.mkdir(exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), np.full((8, 8, 3), i * 50, np.uint8))
    (tmp_path / "class_0" / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    capture = Capture(open_source(str(tmp_path)))
    capture.start()
    frames = drain(capture, delay=0.01)
    assert [f.ref for f in frames] == [
        "class_0/0.png", "class_0/2.png", "class_0/4.png", "class_1/1.png", "class_1/3.png",
    ]
    assert [int(f.data.mean()) for f in frames] == [0, 100, 200, 50, 150]
    assert capture.stats == {"captured": 5, "dropped": 0, "unreadable": 1, "reopens": 0}


def test_lossless_capture_of_a_real_video(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25, (32, 32))
    for i in range(20):
        writer.write(np.full((32, 32, 3), 10 * i, np.uint8))
    writer.release()
    capture = Capture(open_source(str(path)))
    capture.start()
    frames = drain(capture, delay=0.002)
    assert [f.ref for f in frames] == [str(i) for i in range(20)]
    assert capture.stats["dropped"] == 0


def test_stdin_windows_through_capture() -> None:
    stream = io.StringIO("".join(f'{{"values": [{i}, {2 * i}]}}\n' for i in range(12)))
    source = StdinSource(stream, SourceOptions(window=WindowSpec(size=4, stride=2, channels=2)))
    capture = Capture(source)
    capture.start()
    frames = drain(capture)
    assert [f.ref for f in frames] == ["0", "2", "4", "6", "8"]
    assert frames[-1].data[:, 1].tolist() == [16, 18, 20, 22]


def test_a_file_that_cannot_be_opened_finishes_with_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    states: list[tuple[str, str]] = []
    capture = Capture(open_source(str(tmp_path / "empty")),
                      on_state=lambda s, m: states.append((s, m)), reopen_backoff=FAST)
    capture.start()
    assert wait_until(lambda: capture.finished)
    assert capture.error is not None and "no images" in capture.error
    assert states == [("degraded", capture.error)]
    assert capture.get(0.01) is None
    assert capture.stats["reopens"] == 0


# --- failing live sources: reopen with back-off --------------------------------------------------

def test_a_camera_that_fails_to_open_is_retried_until_it_works() -> None:
    states: list[tuple[str, str]] = []
    source = FlakyCamera(open_failures=3)
    capture = Capture(source, on_state=lambda s, m: states.append((s, m)), reopen_backoff=FAST)
    capture.start()
    first = capture.get(timeout=10.0)
    capture.stop()
    assert first is not None
    assert source.opens == 4 and capture.stats["reopens"] == 3
    assert states[0] == ("degraded", "camera fake0: cannot open")
    assert states[1][0] == "ok" and len(states) == 2


@pytest.mark.parametrize("error", [SourceError, RuntimeError])
def test_a_failed_read_reopens_the_source(error: type[Exception]) -> None:
    states: list[str] = []
    source = FlakyCamera(open_failures=0, burst=3, error=error)
    capture = Capture(source, on_state=lambda s, _: states.append(s), reopen_backoff=FAST)
    capture.start()
    assert wait_until(lambda: source.opens >= 4)
    capture.stop()
    assert capture.stats["reopens"] >= 3
    assert states[:5] == ["degraded", "ok", "degraded", "ok", "degraded"]
    assert capture.error is None


def test_a_missing_camera_is_never_fatal() -> None:
    states: list[str] = []
    capture = Capture(open_source("/dev/video99"), on_state=lambda s, _: states.append(s),
                      reopen_backoff=FAST)
    capture.start()
    assert wait_until(lambda: capture.stats["reopens"] >= 2)
    assert not capture.finished and capture.running and capture.degraded
    assert capture.get(0.01) is None
    assert states == ["degraded"]  # reported once, not on every retry
    assert stop_returns(capture)
    assert not capture.running


def test_a_state_callback_that_raises_does_not_stop_capture() -> None:
    def broken(state: str, message: str) -> None:
        raise RuntimeError("subscriber bug")

    capture = Capture(FlakyCamera(open_failures=1), on_state=broken, reopen_backoff=FAST)
    capture.start()
    assert capture.get(timeout=10.0) is not None
    capture.stop()


# --- stopping -------------------------------------------------------------------------------------

def test_stop_is_prompt_during_a_long_back_off() -> None:
    capture = Capture(FlakyCamera(open_failures=10**6), reopen_backoff=(120.0, 120.0))
    capture.start()
    assert wait_until(lambda: capture.degraded)
    assert stop_returns(capture)
    assert not capture.running and capture.finished


def test_stop_is_prompt_while_a_read_is_stuck_in_the_driver() -> None:
    source = StuckCamera()
    capture = Capture(source)
    capture.start()
    assert source.reading.wait(5.0)
    assert stop_returns(capture)
    assert capture.finished and capture.get(0.01) is None
    source.release.set()
    assert wait_until(lambda: not capture.running)


def test_stop_is_prompt_while_the_reader_waits_for_a_consumer() -> None:
    capture = Capture(CountingSource(100, live=False))
    capture.start()
    assert wait_until(lambda: capture.stats["captured"] >= 3)
    assert stop_returns(capture)
    assert not capture.running
    assert capture.stats["captured"] < 100


def test_stop_is_prompt_while_a_paced_file_waits_for_its_tick(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((4, 4, 3), np.uint8))
    capture = Capture(open_source(str(tmp_path), SourceOptions(fps=0.01)))
    capture.start()
    assert capture.get(timeout=5.0) is not None
    assert stop_returns(capture)
    assert not capture.running


def test_capture_cannot_start_twice() -> None:
    capture = Capture(CountingSource(1, live=False))
    capture.start()
    with pytest.raises(RuntimeError):
        capture.start()
    capture.stop()


def test_a_stage_given_runs_on_each_frame_on_the_capture_thread() -> None:
    seen: list[tuple[int, str]] = []

    def ahead(frame: Frame) -> None:
        if frame.index == 2:
            raise ValueError("a frame that cannot be used")
        seen.append((frame.index, threading.current_thread().name))
        frame.meta["ahead"] = frame.index * 10

    capture = Capture(CountingSource(5, live=False), ahead=ahead)
    capture.start()
    frames = drain(capture)
    # the failed one goes on as is: the consumer meets the problem and reports it
    assert [f.meta.get("ahead") for f in frames] == [0, 10, None, 30, 40]
    assert {name for _, name in seen} == {"capture-fake"}
