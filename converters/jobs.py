"""Run a TensorFlow job in a child process and relay only its progress bars."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from .errors import ConvertError

PROGRESS = re.compile(r"^  \S.* \[[#.]+\] \d+/\d+$")


def run_job(job: dict[str, Any], workdir: Path, name: str) -> dict[str, Any]:
    """Run ``converters.child`` on ``job``; return its result or raise ConvertError."""
    path = workdir / f"{name}.job.json"
    path.write_text(json.dumps(job))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONUNBUFFERED="1",
               EDGE_PROGRESS_TTY="1" if sys.stderr.isatty() else "")
    proc = subprocess.Popen([sys.executable, "-m", "converters.child", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    tail: list[str] = []
    relay = threading.Thread(target=_relay, args=(proc.stderr, tail), daemon=True)
    relay.start()
    code = proc.wait()
    relay.join(timeout=5)
    result_path = Path(str(path) + ".result")
    if not result_path.is_file():
        last = tail[-1] if tail else f"exit code {code}"
        raise ConvertError(f"conversion process failed ({last.strip()[:200]})")
    result: dict[str, Any] = json.loads(result_path.read_text())
    if "error" in result:
        raise ConvertError(str(result["error"]))
    return result


def _relay(stream: IO[bytes], tail: list[str]) -> None:
    """Forward progress-bar segments; keep the rest (TF's log noise) for error messages only."""
    debug = bool(os.environ.get("EDGE_DEBUG"))
    buffer = b""
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            break
        buffer += chunk
        while True:
            cut = min((i for i in (buffer.find(b"\r"), buffer.find(b"\n")) if i >= 0), default=-1)
            if cut < 0:
                break
            segment, sep, buffer = buffer[:cut], buffer[cut:cut + 1], buffer[cut + 1:]
            text = segment.decode("utf-8", "replace")
            if PROGRESS.match(text):
                if sys.stderr.isatty():
                    sys.stderr.write("\r" + text + ("\n" if sep == b"\n" else ""))
                elif sep == b"\n":
                    sys.stderr.write(text + "\n")
                sys.stderr.flush()
            elif text.strip():
                tail.append(text)
                del tail[:-50]
                if debug:
                    sys.stderr.write(text + "\n")
