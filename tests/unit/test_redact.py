"""Secrets never shown: one helper masks URL passwords and secret query values everywhere."""

from __future__ import annotations

import logging
import sys

import pytest

from edge_runtime.redact import RedactingFormatter, redact
from edge_runtime.sources import SourceError, open_source


@pytest.mark.parametrize(("text", "shown"), [
    ("rtsp://admin:hunter2@10.0.0.5:554/s", "rtsp://admin:***@10.0.0.5:554/s"),
    ("mqtt://u:p@ss:w@host:1883", "mqtt://u:***@host:1883"),
    ("http://cam/x?user=a&password=hunter2&fps=5", "http://cam/x?user=a&password=***&fps=5"),
    ("https://cam/snap?access_token=hunter2", "https://cam/snap?access_token=***"),
    ("source 'rtsp://a:hunter2@c/1' and mqtt://b:hunter2@d", "source 'rtsp://a:***@c/1' and mqtt://b:***@d"),
    ("rtsp://admin@cam/s", "rtsp://admin@cam/s"),
    ("http://cam:8080/x@y", "http://cam:8080/x@y"),
    ("serial:///dev/ttyUSB0?baud=115200", "serial:///dev/ttyUSB0?baud=115200"),
])
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_log_lines_and_their_tracebacks_are_redacted() -> None:
    url = "rtsp://cam:" + "hunter2" + "@10.0.0.5/live"
    try:
        raise OSError(f"cannot open {url}")
    except OSError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "source %s failed", (url,),
                                   exc_info=sys.exc_info())
    text = RedactingFormatter("%(message)s").format(record)
    assert "hunter2" not in text
    assert text.startswith("source rtsp://cam:***@10.0.0.5/live failed")
    assert "OSError: cannot open rtsp://cam:***@10.0.0.5/live" in text


def test_a_source_error_never_shows_the_password() -> None:
    with pytest.raises(SourceError) as info:
        open_source("ftp://cam:hunter2@10.0.0.5/video")
    assert "hunter2" not in str(info.value) and "cam:***@" in str(info.value)
