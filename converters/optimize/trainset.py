"""Labelled training data for fine-tuning, loaded and checked like calibration data and
preprocessed through ``edge_runtime.preprocess``, then handed to the child as arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.preprocess import InputSpec
from edge_runtime.sources.images import is_image_file

from ..data import Dataset, load_dataset
from ..errors import ConvertError
from ..options import ConvertOptions, Log
from ..prepare import Prepared, check_data, progress_batch


def check_labelled(path: Path) -> None:
    """Refuse training data that cannot carry labels, before any model is loaded."""
    if not path.exists():
        raise ConvertError(f"training data {path} does not exist")
    if path.is_dir():
        labelled = any(p.is_dir() and not p.name.startswith(".") and
                       any(is_image_file(f) for f in p.rglob("*"))
                       for p in path.iterdir())
    elif path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                labelled = "y" in npz.files
        except Exception as exc:
            raise ConvertError(f"training data {path}: cannot read .npz ({exc})") from None
    else:
        labelled = False
    if not labelled:
        raise ConvertError(f"training data {path} has no labels: use class sub-folders or an "
                           ".npz with x and y")


def training_arrays(opts: ConvertOptions, prep: Prepared, log: Log) -> Path:
    """``train.npz`` (x as the model sees it, y class indexes) for ``opts.train``; made once."""
    cached = prep.cache.get("train")
    if cached is not None:
        return Path(cached)
    if opts.train is None:
        raise ConvertError("fine-tuning needs labelled data: give --train PATH")
    if prep.task != "classification":
        raise ConvertError(f"fine-tuning supports classification models; this one is {prep.task}")
    if opts.validation is None and opts.train.resolve() == opts.calibration.resolve():
        raise ConvertError("--train is the --calibration data and no --validation is given: "
                           "the held-out samples accuracy is measured on would be trained on")
    data = load_dataset(opts.train, class_names=prep.class_names)
    labels = data.labels
    if labels is None or np.any(labels < 0):
        raise ConvertError(f"training data {opts.train} has no labels: use class sub-folders or "
                           "an .npz with y")
    if data.unreadable:
        log(f"skipped {len(data.unreadable)} unreadable training file(s), e.g. {data.unreadable[0]}")
    if prep.spec.is_image:
        data = data.in_opencv_order()
    check_data(opts, data, prep.spec, prep.class_names, role="training")
    classes = prep.float_run.outputs.shape[1]
    highest = int(np.max(labels))
    if highest >= classes:
        raise ConvertError(f"training data {opts.train} has class index {highest} "
                           f"but the model outputs {classes} classes")
    log(f"training: {len(data)} samples from {data.source}")
    path = prep.work / "train.npz"
    save_arrays(path, data, prep.spec, "preprocessing (train)")
    prep.cache["train"] = str(path)
    return path


def evaluation_arrays(prep: Prepared) -> Path | None:
    """The verification samples as arrays, for accuracy figures measured during training."""
    if prep.evaluation.labels is None:
        return None
    cached = prep.cache.get("evaluation")
    if cached is None:
        cached = prep.work / "evaluation.npz"
        save_arrays(cached, prep.evaluation, prep.spec, "preprocessing (eval)")
        prep.cache["evaluation"] = str(cached)
    return Path(cached)


def save_arrays(path: Path, data: Dataset, spec: InputSpec, label: str) -> None:
    assert data.labels is not None
    np.savez(path, x=progress_batch(data, spec, label), y=data.labels.astype(np.int64))
