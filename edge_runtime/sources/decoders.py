"""How a video file or stream is decoded: a board's hardware H.264 decoder where it has one,
software otherwise, and MJPEG packets decoded at a reduced scale (:mod:`.jpeg`).

* ``v4l2m2m`` — Raspberry Pi 4 / Zero 2 W: the V4L2 memory-to-memory H.264 decoder, through
  FFmpeg's ``h264_v4l2m2m`` (OpenCV's FFmpeg must be built with it, as Raspberry Pi OS's is).
* ``nvv4l2`` — Jetson: NVDEC through GStreamer's ``nvv4l2decoder`` (OpenCV must be built with
  GStreamer, as JetPack's is).

A decoder the board or this OpenCV does not offer falls back to software decoding; the source's
``decoding`` says so, and why, in status.

Software decoding of a file runs on one FFmpeg thread unless ``decode_threads`` says otherwise.
FFmpeg's own default (a thread per core, frame by frame) keeps every core busy decoding ahead;
with the interpreter on the same cores one thread costs less: a 720p H.264 frame took 2.46 ms
of CPU on one thread against 2.73 ms on two here, and the daemon served 5–10% more results per
second. A live stream keeps FFmpeg's default: a camera's stream has to be decoded as fast as it
comes, and one core of a small board may not keep up with a large one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cv2

from edge_runtime.sources.base import SourceOptions
from edge_runtime.sources.jpeg import JpegDecoder, reduction

log = logging.getLogger(__name__)

HW_DECODERS = {
    "v4l2m2m": "V4L2 memory-to-memory H.264 decoder (Raspberry Pi)",
    "nvv4l2": "NVDEC through GStreamer (Jetson)",
}
FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_ENV_LOCK = threading.Lock()
_GST_TAIL = ("nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
             "video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")


def wanted_hw_decoder(options: SourceOptions) -> str | None:
    """The hardware decoder the config asks for, or the profile's under ``decode: auto``."""
    if options.decode in HW_DECODERS:
        return options.decode
    if options.decode == "auto" and options.hw_decoder in HW_DECODERS:
        return options.hw_decoder
    return None


def fourcc(capture: Any) -> str:
    code = int(capture.get(cv2.CAP_PROP_FOURCC))
    return code.to_bytes(4, "little").decode("ascii", "replace").strip("\0 ").upper()


@contextmanager
def ffmpeg_options(extra: str) -> Iterator[None]:
    """OpenCV's FFmpeg capture options with ``extra`` added, for one open call."""
    with _ENV_LOCK:
        before = os.environ.get(FFMPEG_OPTIONS)
        os.environ[FFMPEG_OPTIONS] = f"{before}|{extra}" if before else extra
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(FFMPEG_OPTIONS, None)
            else:
                os.environ[FFMPEG_OPTIONS] = before


def gstreamer_available() -> bool:
    return any(line.strip().startswith("GStreamer:") and "YES" in line
               for line in cv2.getBuildInformation().splitlines())


def gstreamer_pipeline(target: str) -> str | None:
    """A Jetson decoding pipeline for a file or an RTSP URL (None for other sources)."""
    if target.lower().startswith(("rtsp://", "rtsps://")):
        return f'rtspsrc location="{target}" latency=0 ! rtph264depay ! h264parse ! {_GST_TAIL}'
    if "://" in target:
        return None
    demux = "matroskademux" if target.lower().endswith((".mkv", ".webm")) else "qtdemux"
    return f'filesrc location="{target}" ! {demux} ! h264parse ! {_GST_TAIL}'


def open_hardware(target: str, decoder: str, params: list[int] | None = None
                  ) -> tuple[Any | None, str]:
    """A capture decoding ``target`` on ``decoder`` that has delivered a frame, or (None, why
    not). The probe frame is consumed: a file is rewound, a stream just moves on."""
    if decoder == "nvv4l2":
        if not gstreamer_available():
            return None, "this OpenCV was built without GStreamer"
        pipeline = gstreamer_pipeline(target)
        if pipeline is None:
            return None, "only files and rtsp:// streams go through GStreamer"
        capture = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    else:
        with ffmpeg_options("video_codec;h264_v4l2m2m"):
            capture = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params or [])
    if not capture.isOpened():
        capture.release()
        return None, f"{decoder} cannot open it here"
    ok, _ = capture.read()
    if not ok:
        capture.release()
        return None, f"{decoder} opened it but decoded no frame"
    if "://" not in target:
        capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return capture, ""


def note_fallback(decoding: dict[str, object], decoder: str, why: str, what: str) -> None:
    note = f"{decoder} unavailable ({why}); decoding in software"
    if decoding.get("note") != note:
        log.warning("%s: %s", what, note)
    decoding.update(decoder="software", requested=decoder, note=note)


def raw_jpeg(capture: Any, options: SourceOptions) -> JpegDecoder | None:
    """For an MJPEG capture whose frames are much larger than the model's input: switch it to
    handing out the JPEG packets (FFmpeg's raw mode), to be decoded at a reduced scale."""
    if options.target is None or options.decode == "full" or fourcc(capture) != "MJPG":
        return None
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if width <= 0 or height <= 0 or reduction((width, height), options.target) == 1:
        return None
    return JpegDecoder(options.target) if capture.set(cv2.CAP_PROP_FORMAT, -1) else None


H264 = frozenset({"H264", "AVC1", "X264", "DAVC"})
N_THREADS: int | None = getattr(cv2, "CAP_PROP_N_THREADS", None)   # OpenCV 4.6 and later


def open_ffmpeg(target: str, threads: int | None, params: list[int] | None = None) -> Any:
    """OpenCV's FFmpeg capture of ``target`` decoding on ``threads`` threads (None, or an
    OpenCV older than 4.6, which has no such setting: FFmpeg's default)."""
    extra = [N_THREADS, threads] if N_THREADS is not None and threads is not None else []
    return cv2.VideoCapture(target, cv2.CAP_FFMPEG, [*(params or []), *extra])


def open_capture(target: str, options: SourceOptions, decoding: dict[str, object], what: str,
                 params: list[int] | None = None, *, live: bool = False,
                 ) -> tuple[Any, JpegDecoder | None]:
    """A capture for ``target`` (OpenCV's FFmpeg backend), moved onto the hardware decoder the
    config or profile asks for when the video is H.264; the MJPEG packet decoder, if used.
    ``live``: a stream, decoded on FFmpeg's own threads unless the options say how many."""
    threads = options.decode_threads
    if threads is None and not live:
        threads = 1
    capture = open_ffmpeg(target, threads, params)
    hw = wanted_hw_decoder(options)
    decoding.clear()
    decoding["decoder"] = "software"
    if hw is not None and capture.isOpened() and fourcc(capture) in H264:
        accelerated, why = open_hardware(target, hw, params)
        if accelerated is not None:
            capture.release()
            decoding["decoder"] = hw
            return accelerated, None
        note_fallback(decoding, hw, why, what)
    jpeg = raw_jpeg(capture, options) if capture.isOpened() else None
    if jpeg is not None:
        decoding["jpeg_scale"] = "reduced"
    elif N_THREADS is not None and capture.isOpened():   # FFmpeg decodes: on how many threads
        decoding["threads"] = int(capture.get(N_THREADS))
    return capture, jpeg
