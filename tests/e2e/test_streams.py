"""Network cameras as a user has them: an MJPEG-over-HTTP camera (the real HTTP protocol, decoded
by OpenCV's FFmpeg) served on a loopback port, the real ``edge-runtime run`` in a subprocess and
a real Mosquitto. A stream that drops is reopened with back-off while status says ``degraded``;
a camera that is not there at start is retried, not fatal."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import pytest
from support.daemon import (
    DaemonProcess,
    Mosquitto,
    Subscriber,
    free_port,
    missing,
    new_device,
    read_retained,
    result_topic,
    results,
    run_args,
    seqs,
    status_topic,
    top_label,
    wait_for,
)

from edge_runtime.model import open_model

pytestmark = pytest.mark.mosquitto

CAMERA_FPS = 30.0
LABEL = "digit_3"
BOUNDARY = b"frame"


class MjpegCamera:
    """An IP camera's ``/video.mjpg``: JPEG frames in a ``multipart/x-mixed-replace`` response,
    at a steady rate, until :meth:`stop` (which also ends the responses in progress)."""

    def __init__(self, frames: list[bytes], port: int) -> None:
        self.frames = frames
        self.port = port
        self.url = f"http://127.0.0.1:{port}/video.mjpg"
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MjpegCamera:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type",
                                 f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
                self.end_headers()
                sent = 0
                try:
                    while not camera._stopping.is_set():
                        jpeg = camera.frames[sent % len(camera.frames)]
                        self.wfile.write(b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: %d\r\n\r\n" % len(jpeg) + jpeg + b"\r\n")
                        sent += 1
                        time.sleep(1 / CAMERA_FPS)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def camera(digits: Path, digits_bundle: Path) -> Iterator[MjpegCamera]:
    """Threes that the bundle itself reads as threes with a score of at least 0.9 after the
    JPEG round trip, so every result from the stream has one right answer."""
    model = open_model(digits_bundle, threads=1)
    frames = []
    for path in sorted((digits / "images" / "val" / LABEL).glob("*.png")):
        jpeg = cv2.imencode(".jpg", cv2.imread(str(path)), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
        outcome, _ = model.run(cv2.imdecode(jpeg, cv2.IMREAD_COLOR))
        if outcome.top_label == LABEL and (outcome.top_score or 0.0) >= 0.9:
            frames.append(jpeg.tobytes())
    model.close()
    assert len(frames) >= 5, "too few confident threes to make a camera of"
    cam = MjpegCamera(frames[:12], free_port()).start()
    yield cam
    cam.stop()


@pytest.fixture
def large_camera(digits: Path, digits_bundle: Path) -> Iterator[MjpegCamera]:
    """Threes enlarged to 224x224, eight times the model's input: its frames are decoded at a
    reduced scale. Only frames the bundle reads as threes both ways are served."""
    from edge_runtime.sources.jpeg import JpegDecoder

    model = open_model(digits_bundle, threads=1)
    reduced = JpegDecoder((model.spec.width, model.spec.height))
    frames = []
    for path in sorted((digits / "images" / "val" / LABEL).glob("*.png")):
        big = cv2.resize(cv2.imread(str(path)), (224, 224), interpolation=cv2.INTER_CUBIC)
        jpeg = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
        both = [model.run(image)[0].top_label
                for image in (cv2.imdecode(jpeg, cv2.IMREAD_COLOR), reduced(jpeg.tobytes()))]
        if both == [LABEL, LABEL]:
            frames.append(jpeg.tobytes())
    model.close()
    assert len(frames) >= 5, "too few threes to make a camera of"
    cam = MjpegCamera(frames[:12], free_port()).start()
    yield cam
    cam.stop()


def statuses(sub: Subscriber, device: str) -> list[dict[str, Any]]:
    return [m.json() for m in sub.messages(status_topic(device))]


def test_an_mjpeg_camera_over_http_is_served_newest_frame_first(
        broker: Mosquitto, digits_bundle: Path, camera: MjpegCamera, tmp_path: Path) -> None:
    device, count = new_device("mjpeg"), 20
    with Subscriber(broker, result_topic(device)) as sub:
        daemon = DaemonProcess(run_args(digits_bundle, camera.url, broker_url=broker.url,
                                        device=device, state_dir=tmp_path / "state",
                                        extra=["--max-frames", str(count)]), tmp_path)
        with daemon:
            assert daemon.wait(60) == 0, daemon.tail()
        assert sub.wait_for(count, 10), daemon.tail()
        got = results(sub, device)
    assert sorted(set(seqs(got))) == list(range(1, count + 1))
    assert [top_label(r) for r in got] == [LABEL] * count
    captured = sorted(r["frame"]["captured_at"] for r in got)
    assert captured[-1] - captured[0] >= 0.5 * (count - 1) / CAMERA_FPS  # live, not replayed


def test_a_stream_that_drops_is_reopened_and_status_says_degraded_meanwhile(
        broker: Mosquitto, digits_bundle: Path, camera: MjpegCamera, tmp_path: Path) -> None:
    device = new_device("drop")
    with Subscriber(broker, [result_topic(device), status_topic(device)]) as sub:
        daemon = DaemonProcess(run_args(digits_bundle, camera.url, broker_url=broker.url,
                                        device=device, state_dir=tmp_path / "state"), tmp_path)
        with daemon:
            assert sub.wait_for(5, 30, result_topic(device)), daemon.tail()

            camera.stop()
            assert wait_for(lambda: any(s["state"] == "degraded"
                                        for s in statuses(sub, device)), 30), daemon.tail()
            degraded = next(s for s in statuses(sub, device) if s["state"] == "degraded")
            assert "stream" in degraded["reason"] and "127.0.0.1" in degraded["reason"]
            assert daemon.alive
            before = len(results(sub, device))

            camera.start()
            assert wait_for(lambda: len(results(sub, device)) >= before + 5, 45), daemon.tail()
            assert wait_for(lambda: statuses(sub, device)[-1]["state"] == "online", 10), \
                (statuses(sub, device)[-3:], daemon.tail())
            assert daemon.terminate() == 0, daemon.tail()
        got = seqs(results(sub, device))
    assert not missing(got, max(got)), "seq has gaps across the outage"
    assert "recovered" in daemon.stderr()
    assert read_retained(broker, status_topic(device))["state"] == "offline"


def test_a_camera_missing_at_start_is_retried_and_the_daemon_stays_up(
        broker: Mosquitto, digits_bundle: Path, tmp_path: Path) -> None:
    device = new_device("nocam")
    with Subscriber(broker, status_topic(device)) as sub:
        daemon = DaemonProcess(run_args(digits_bundle, "/dev/video97", broker_url=broker.url,
                                        device=device, state_dir=tmp_path / "state"), tmp_path)
        with daemon:
            assert wait_for(lambda: any(s["state"] == "degraded"
                                        for s in statuses(sub, device)), 30), daemon.tail()
            degraded = next(s for s in statuses(sub, device) if s["state"] == "degraded")
            assert "/dev/video97" in degraded["reason"]
            assert daemon.wait_for_log("retrying", 10), daemon.tail()
            time.sleep(1.5)  # several back-off periods: still up, still retrying
            assert daemon.alive, daemon.tail()
            assert daemon.terminate() == 0, daemon.tail()


def test_a_large_mjpeg_stream_is_decoded_at_a_reduced_scale(
        broker: Mosquitto, digits_bundle: Path, large_camera: MjpegCamera, tmp_path: Path) -> None:
    device, count = new_device("mjpeg-large"), 10
    with Subscriber(broker, f"edge/{device}/#") as sub:
        daemon = DaemonProcess(run_args(digits_bundle, large_camera.url, broker_url=broker.url,
                                        device=device, state_dir=tmp_path / "state",
                                        extra=["--max-frames", str(count)]), tmp_path)
        with daemon:
            assert daemon.wait(60) == 0, daemon.tail()
        assert sub.wait_for(count, 10, result_topic(device)), daemon.tail()
        got = results(sub, device)
        online = [s for s in statuses(sub, device) if s.get("state") == "online"]
        metrics = [m.json() for m in sub.messages(f"edge/{device}/metrics")]
    assert [top_label(r) for r in got] == [LABEL] * count
    assert online and online[-1]["pipelines"]["default"]["decode"]["jpeg_scale"] == "reduced"
    assert metrics[-1]["pipelines"]["default"]["decode"] == {"decoder": "software",
                                                             "jpeg_scale": "reduced"}
