"""Calibration and validation data: an image folder, an ``.npz`` or a video file (SPEC §5).

Items are kept in "pixel space" (what a camera would deliver: uint8 images, or raw sensor values)
and turned into model input by ``edge_runtime.preprocess`` — the same function the daemon runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.sources.images import decode_image, label_for, list_images

from .errors import ConvertError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg"}


@dataclass
class Dataset:
    """Items in pixel space, optional integer labels, and where they came from."""

    items: list[np.ndarray]
    labels: np.ndarray | None
    class_names: list[str] | None
    source: str
    sha256: str
    refs: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    rgb: bool = False  # 3-channel items are RGB (NumPy's usual order), not OpenCV's BGR

    def __len__(self) -> int:
        return len(self.items)

    def in_opencv_order(self) -> Dataset:
        """The same images with colour channels in OpenCV's BGR order, as a camera's frames
        reach ``edge_runtime.preprocess`` on the device (image folders and videos already are)."""
        if not self.rgb:
            return self
        items = [np.ascontiguousarray(x[..., ::-1]) if x.ndim == 3 and x.shape[-1] == 3 else x
                 for x in self.items]
        return replace(self, items=items, rgb=False)

    def subset(self, indexes: Sequence[int] | np.ndarray) -> Dataset:
        idx = [int(i) for i in indexes]
        return Dataset(
            items=[self.items[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            class_names=self.class_names,
            source=self.source,
            sha256=self.sha256,
            refs=[self.refs[i] for i in idx] if self.refs else [],
            rgb=self.rgb,
        )


def load_dataset(path: Path, *, class_names: Sequence[str] | None = None) -> Dataset:
    """Load everything from ``path``; raise ConvertError with one line when it cannot be used."""
    if not path.exists():
        raise ConvertError(f"data {path} does not exist")
    if path.is_dir():
        data = _load_folder(path, class_names)
    elif path.suffix.lower() == ".npz":
        data = _load_npz(path, class_names)
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        data = _load_video(path)
    else:
        raise ConvertError(f"data {path}: expected an image folder, an .npz or a video file")
    if not data.items:
        unreadable = f" ({len(data.unreadable)} unreadable files)" if data.unreadable else ""
        raise ConvertError(f"data {path}: no readable samples{unreadable}")
    return data


def _load_folder(root: Path, class_names: Sequence[str] | None) -> Dataset:
    """Images read as the daemon's image-folder source reads them (same suffixes, recursion and
    colour handling); an image's class is its first sub-folder."""
    listed = [(p, label_for(p.relative_to(root))) for p in list_images(root)]
    folder_classes = sorted({label for _, label in listed if label is not None})
    if folder_classes:
        names = list(class_names) if class_names else folder_classes
        unknown = [c for c in folder_classes if c not in names]
        if unknown:
            raise ConvertError(
                f"data {root}: class folder(s) {', '.join(unknown[:5])} are not in the labels "
                f"({', '.join(names[:10])}{'…' if len(names) > 10 else ''})")
        files = [(p, names.index(label)) for p, label in listed if label is not None]
    else:
        names = list(class_names) if class_names else []
        files = [(p, -1) for p, _ in listed]
    digest = hashlib.sha256()
    items: list[np.ndarray] = []
    targets: list[int] = []
    refs: list[str] = []
    unreadable: list[str] = []
    for path, target in files:
        raw = path.read_bytes()
        image = decode_image(raw)
        rel = path.relative_to(root).as_posix()
        if image is None:
            unreadable.append(rel)
            continue
        digest.update(rel.encode())
        digest.update(hashlib.sha256(raw).digest())
        items.append(image)
        targets.append(target)
        refs.append(rel)
    labels = np.asarray(targets, dtype=np.int64) if folder_classes else None
    return Dataset(items, labels, names or None, f"folder {root}", digest.hexdigest(), refs,
                   unreadable)


def _load_npz(path: Path, class_names: Sequence[str] | None) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz:
                raise ConvertError(f"data {path}: .npz has no array 'x' (found {list(npz.keys())})")
            x = np.asarray(npz["x"])
            y = np.asarray(npz["y"]) if "y" in npz else None
    except ConvertError:
        raise
    except Exception as exc:
        raise ConvertError(f"data {path}: cannot read .npz ({exc})") from None
    if x.ndim < 2 or len(x) == 0:
        raise ConvertError(f"data {path}: 'x' must hold at least one sample (shape {x.shape})")
    if y is not None:
        y = _npz_labels(path, y, len(x), class_names)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    items = [x[i] for i in range(len(x))]
    names = list(class_names) if class_names else None
    return Dataset(items, y, names, f"npz {path}", digest, [str(i) for i in range(len(x))],
                   rgb=True)


def _npz_labels(path: Path, y: np.ndarray, n: int, class_names: Sequence[str] | None,
                ) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if len(y) != n:
        raise ConvertError(f"data {path}: 'y' has {len(y)} labels for {n} samples")
    if y.dtype.kind in "US":
        if not class_names:
            raise ConvertError(f"data {path}: 'y' holds label names; give --labels to map them "
                               "to class indexes")
        lookup = {name: i for i, name in enumerate(class_names)}
        missing = sorted({str(v) for v in y if str(v) not in lookup})
        if missing:
            raise ConvertError(f"data {path}: labels {', '.join(missing[:5])} are not in labels.txt")
        return np.asarray([lookup[str(v)] for v in y], dtype=np.int64)
    if y.dtype.kind not in "iubf" or not np.all(np.mod(y, 1) == 0):
        raise ConvertError(f"data {path}: 'y' must hold integer class indexes")
    if class_names and len(y) and (y.min() < 0 or y.max() >= len(class_names)):
        raise ConvertError(f"data {path}: 'y' holds class indexes {int(y.min())}..{int(y.max())} "
                           f"but there are {len(class_names)} labels")
    return y.astype(np.int64)


def _load_video(path: Path, max_frames: int = 2000) -> Dataset:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ConvertError(f"data {path}: cannot open the video")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    step = max(1, total // max_frames) if total > 0 else 1
    digest = hashlib.sha256()
    items: list[np.ndarray] = []
    refs: list[str] = []
    index = 0
    try:
        while len(items) < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            if index % step == 0:
                items.append(frame)
                refs.append(str(index))
                digest.update(frame[::8, ::8].tobytes())
            index += 1
    finally:
        cap.release()
    return Dataset(items, None, None, f"video {path}", digest.hexdigest(), refs)


def stratified_sample(data: Dataset, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` indexes spread evenly across classes (or uniformly when unlabelled)."""
    rng = np.random.default_rng(seed)
    total = len(data)
    if n >= total:
        return rng.permutation(total)
    if data.labels is None:
        return np.sort(rng.choice(total, size=n, replace=False))
    by_class = [rng.permutation(np.flatnonzero(data.labels == c))
                for c in np.unique(data.labels)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        for members in by_class:
            if depth < len(members) and len(chosen) < n:
                chosen.append(int(members[depth]))
        depth += 1
    return np.asarray(sorted(chosen))


def split_holdout(data: Dataset, fraction: float = 0.2, limit: int = 500, seed: int = 1,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Split indexes into (calibration, held-out) with every class on both sides when possible."""
    rng = np.random.default_rng(seed)
    total = len(data)
    n_hold = min(limit, int(total * fraction))
    if n_hold == 0:
        return np.arange(total), np.arange(0)
    held = stratified_sample(data, n_hold, seed=seed) if data.labels is not None else \
        rng.choice(total, size=n_hold, replace=False)
    mask = np.ones(total, dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask), np.sort(held)
