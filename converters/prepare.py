"""Everything the profiles of one conversion share: the model checked, the float reference
converted and run on LiteRT, the calibration and verification data loaded, checked and
preprocessed through ``edge_runtime.preprocess``."""

from __future__ import annotations

import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundles.manifest import read_labels
from edge_runtime.preprocess import InputSpec, preprocess_batch

from .data import Dataset, load_dataset, split_holdout, stratified_sample
from .errors import ConvertError
from .hygiene import check_calibration
from .jobs import run_job
from .options import ConvertOptions, Log
from .verify import ModelRun, looks_like_probabilities, run_model

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class Prepared:
    """What every profile shares: the float reference, data and input description."""

    work: Path
    spec: InputSpec
    task: str
    class_names: list[str] | None
    calib: Dataset
    calib_path: Path
    evaluation: Dataset
    eval_basis: str
    float_run: ModelRun
    float_model: Path
    info: dict[str, Any]
    softmax: bool
    # Filled in by ``converters.optimize`` when the call asks for more than quantization.
    optimized: Any = None
    cache: dict[str, Any] = field(default_factory=dict)
    # Detection: the manifest's decoder record and the evaluation images' ground truth.
    decoder: dict[str, Any] | None = None
    truths: list[Any] | None = None



def read_label_file(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    if not path.is_file():
        raise ConvertError(f"labels file {path} does not exist")
    labels = read_labels(path)
    if not labels:
        raise ConvertError(f"labels file {path} is empty")
    if len(set(labels)) != len(labels):
        raise ConvertError(f"labels file {path} has duplicate labels")
    return labels


def prepare(opts: ConvertOptions, labels: list[str] | None, work: Path, log: Log) -> Prepared:
    check_model_file(opts.model)
    check_model_file(opts.reference_model)
    calib_all = load_dataset(opts.calibration, class_names=labels)
    if calib_all.unreadable:
        log(f"skipped {len(calib_all.unreadable)} unreadable calibration file(s), e.g. "
            f"{calib_all.unreadable[0]}")
    class_names = labels or calib_all.class_names
    validation = (load_dataset(opts.validation, class_names=class_names)
                  if opts.validation else None)
    log(f"loading {opts.reference_model.name} and converting the float reference …")
    float_model = work / "float.tflite"
    info = run_job({"job": "inspect", "model": str(opts.reference_model.resolve()),
                    "out": str(float_model)}, work, "inspect")
    spec = _input_spec(opts, float_model)
    if spec.is_image:
        calib_all = calib_all.in_opencv_order()
        validation = validation.in_opencv_order() if validation is not None else None
    if validation is not None:
        calib_pool, evaluation, basis = calib_all, validation, "validation"
    else:
        keep, held = split_holdout(calib_all)
        calib_pool, evaluation, basis = calib_all.subset(keep), calib_all.subset(held), "held-out"
    chosen = calib_pool.subset(stratified_sample(calib_pool, opts.samples))
    check_data(opts, chosen, spec, class_names)
    if len(evaluation) == 0:
        raise ConvertError("no samples left to verify on; give --validation or more data")
    log(f"calibration: {len(chosen)} samples from {calib_all.source}; verification: "
        f"{len(evaluation)} {basis} samples")
    calib_path = work / "calibration.npy"
    np.save(calib_path, progress_batch(chosen, spec, "preprocessing"))
    float_run = run_model(float_model, evaluation, spec)
    task = opts.task or infer_task(float_run, spec, class_names)
    _check_outputs(task, float_run, class_names, opts.labels)
    softmax = task == "classification" and not looks_like_probabilities(float_run.outputs)
    return Prepared(work, spec, task, class_names, chosen, calib_path, evaluation, basis,
                    float_run, float_model, info, softmax)


def check_model_file(path: Path) -> None:
    """Refuse a missing or obviously corrupt model before a TensorFlow process is started."""
    if not path.exists():
        raise ConvertError(f"model {path} does not exist")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ConvertError(f"model {path} is a directory but not a SavedModel "
                               "(no saved_model.pb)")
        return
    suffix = path.suffix.lower()
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ConvertError(f"model {path} is not a valid .keras file (not a zip archive)")
    if suffix in (".h5", ".hdf5") and not _is_hdf5(path):
        raise ConvertError(f"model {path} is not a valid HDF5 file")
    if suffix not in (".keras", ".h5", ".hdf5"):
        raise ConvertError(f"model {path}: expected a .keras or .h5 file or a SavedModel directory")


def _is_hdf5(path: Path) -> bool:
    # The signature sits at offset 0, or after a user block of 512 * 2**k bytes.
    size = path.stat().st_size
    with open(path, "rb") as fh:
        for offset in (0, *(512 << k for k in range(32))):
            if offset + len(HDF5_SIGNATURE) > size:
                break
            fh.seek(offset)
            if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
    return False


def _input_spec(opts: ConvertOptions, float_model: Path) -> InputSpec:
    from edge_runtime.backends import load_backend

    backend = load_backend(float_model, threads=1)
    try:
        shape = tuple(int(v) for v in backend.inputs[0].shape)
        if len(backend.inputs) != 1:
            raise ConvertError(f"the model has {len(backend.inputs)} inputs; one is supported")
    finally:
        backend.close()
    channels = shape[3] if len(shape) == 4 else 1
    color = opts.color or ("GRAY" if channels == 1 else "RGB")
    if len(shape) == 4 and channels not in (1, 3):
        raise ConvertError(f"the model input has {channels} channels; images need 1 or 3")
    if len(shape) == 4 and (color == "GRAY") != (channels == 1):
        raise ConvertError(f"--color {color} does not fit a model input with {channels} "
                           "channel(s)")
    return InputSpec(shape=shape, dtype="float32", color=color,  # type: ignore[arg-type]
                     resize=opts.resize,  # type: ignore[arg-type]
                     mean=opts.input_mean or (0.0,), std=opts.input_std or (1.0,))


def check_data(opts: ConvertOptions, data: Dataset, spec: InputSpec,
               class_names: list[str] | None, role: str = "calibration") -> None:
    if not spec.is_image:
        size = int(np.prod(spec.shape))
        bad = [i for i, x in enumerate(data.items) if np.asarray(x).size != size]
        if bad:
            raise ConvertError(f"{role} sample {bad[0]} has {np.asarray(data.items[bad[0]]).size}"
                               f" values; the model input takes {size} (shape {list(spec.shape)})")
    problems = check_calibration(data, spec, class_names if data.labels is not None else None)
    if problems and not opts.allow_poor_calibration:
        raise ConvertError(f"{role} data refused: " + "; ".join(problems).replace(
            "calibration", role) + " (override with --allow-poor-calibration)")


def progress_batch(data: Dataset, spec: InputSpec, label: str) -> np.ndarray:
    import click

    # stdout carries the summary table only
    with click.progressbar(length=len(data), label=f"  {label:<22}",
                           file=sys.stderr, show_pos=True) as bar:
        out = preprocess_batch(data.items, spec)
        bar.update(len(data))
    return out


def infer_task(run: ModelRun, spec: InputSpec, class_names: list[str] | None) -> str:
    width = run.outputs.shape[1]
    if width == int(np.prod(spec.shape)):
        return "anomaly"
    if width > 1 and (class_names or looks_like_probabilities(run.outputs)):
        return "classification"
    if width > 1 and width <= 1000:
        return "classification"
    return "regression" if width <= 16 else "raw"


def _check_outputs(task: str, run: ModelRun, class_names: list[str] | None,
                   labels_file: Path | None) -> None:
    if task != "classification" or not class_names:
        return
    classes = run.outputs.shape[1]
    if classes != len(class_names):
        source = f"labels file {labels_file}" if labels_file else "the class folders"
        raise ConvertError(f"{source} give {len(class_names)} labels but the model outputs "
                           f"{classes} classes")

