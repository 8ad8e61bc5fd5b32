"""Hard examples (opt-in, local only): frames the model was unsure about (top-1 minus top-2 below
a margin) kept in ``STATE/samples/<pipeline>/`` with their result, for someone to label and train
on later. Bounded by count and bytes (the oldest go first); written by a thread of their own
behind a small queue, so a slow disk costs the pipeline a dropped sample, never a frame. Nothing
here is ever published: ``edge-runtime samples list|export`` reads them on the board.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edge_runtime.frames import Frame
    from edge_runtime.postprocess import Outcome

log = logging.getLogger(__name__)
QUEUE_SIZE = 8
SUFFIX = ".json"


class SampleKeeper:
    def __init__(self, folder: Path, *, max_margin: float, max_count: int, max_bytes: int,
                 ) -> None:
        self.folder = folder
        self.max_margin = max_margin
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._queue: queue.Queue[tuple[np.ndarray, dict[str, Any]] | None] = \
            queue.Queue(QUEUE_SIZE)
        self._kept: deque[tuple[str, int]] = deque()
        self._bytes = 0
        self.dropped = 0
        self._thread: threading.Thread | None = None

    def offer(self, frame: Frame, outcome: Outcome, model: dict[str, str]) -> None:
        """Keep ``frame`` if the model was unsure about it (pipeline thread: cheap)."""
        p = outcome.probabilities
        if p is None or p.size < 2 or frame.data.dtype != np.uint8:
            return
        top2 = np.partition(p, -2)[-2:]
        margin = float(top2[1] - top2[0])
        if margin >= self.max_margin:
            return
        record = {"frame": {"index": frame.index, "ref": frame.ref,
                            "captured_at": round(frame.captured_at, 3)},
                  "model": model, "task": outcome.task, **outcome.payload,
                  "margin": round(margin, 5), **({"label": frame.label} if frame.label else {})}
        if self._thread is None:
            self._start()
        try:
            self._queue.put_nowait((frame.data.copy(), record))
        except queue.Full:
            self.dropped += 1

    def counts(self) -> dict[str, int]:
        return {"kept": len(self._kept), "bytes": self._bytes, "dropped": self.dropped}

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for meta in sorted(self.folder.glob(f"*{SUFFIX}")):
            self._kept.append((meta.stem, _size(meta.stem, self.folder)))
            self._bytes += self._kept[-1][1]
        self._thread = threading.Thread(target=self._run, name="samples", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import cv2

        while True:
            item = self._queue.get()
            if item is None:
                return
            image, record = item
            stem = f"{time.time_ns()}-{record['frame']['index']}"
            try:
                if not cv2.imwrite(str(self.folder / f"{stem}.png"), image):
                    raise OSError("the image could not be encoded")
                record["image"] = f"{stem}.png"
                (self.folder / f"{stem}{SUFFIX}").write_text(json.dumps(record) + "\n")
            except OSError as exc:
                self.dropped += 1
                log.warning("hard example not kept: %s", exc)
                continue
            size = _size(stem, self.folder)
            self._kept.append((stem, size))
            self._bytes += size
            while self._kept and (len(self._kept) > self.max_count
                                  or self._bytes > self.max_bytes):
                old, old_size = self._kept.popleft()
                self._bytes -= old_size
                for suffix in (".png", SUFFIX):
                    (self.folder / f"{old}{suffix}").unlink(missing_ok=True)


def _size(stem: str, folder: Path) -> int:
    total = 0
    for suffix in (".png", SUFFIX):
        try:
            total += (folder / f"{stem}{suffix}").stat().st_size
        except OSError:
            pass
    return total


def list_samples(root: Path) -> list[dict[str, Any]]:
    """Every kept sample under ``root`` (``STATE/samples``), oldest first, with its pipeline."""
    found: list[dict[str, Any]] = []
    if not root.is_dir():
        return found
    for meta in sorted(root.glob(f"*/*{SUFFIX}"), key=lambda p: (p.parent.name, p.name)):
        try:
            record = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            found.append({"pipeline": meta.parent.name, "id": meta.stem, **record})
    return found


def export_samples(root: Path, dest: Path) -> int:
    """Copy every kept sample into ``dest/<pipeline>/``; how many were copied."""
    copied = 0
    for record in list_samples(root):
        folder = root / record["pipeline"]
        target = dest / record["pipeline"]
        target.mkdir(parents=True, exist_ok=True)
        for suffix in (".png", SUFFIX):
            source = folder / f"{record['id']}{suffix}"
            if source.exists():
                shutil.copy2(source, target / source.name)
        copied += 1
    return copied
