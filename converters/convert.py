"""``edge-convert convert``: load → calibrate → quantize → verify → (recover) → package.

Every profile is validated before any work starts. TensorFlow runs only in child processes
(``converters.child``); this process does data, verification on LiteRT and packaging.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundles.manifest import TASKS, read_labels
from edge_runtime.preprocess import InputSpec, preprocess_batch

from . import __version__
from .bundle_writer import BundleParts, replace_dir, write_bundle
from .data import Dataset, load_dataset, split_holdout, stratified_sample
from .errors import ConvertError
from .hygiene import check_calibration
from .jobs import run_job
from .profiles import Profile, load_profile
from .verify import (
    ModelRun,
    compare,
    float_tensors,
    looks_like_probabilities,
    reference_stats,
    run_model,
)

Log = Callable[[str], None]
RECOVERY_FRACTIONS = (0.1, 0.25)
ONE_CLASS_SHARE = 0.9        # a float model giving one class this often is suspect
ONE_CLASS_MIN_SAMPLES = 20
INPUT_OUTSIDE_SHARE = 0.05   # of input values the int8 input range may clip
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class ConvertOptions:
    model: Path
    profiles: list[str]
    calibration: Path
    out: Path
    validation: Path | None = None
    labels: Path | None = None
    name: str | None = None
    version: str = "1"
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    color: str | None = None
    resize: str = "stretch"
    task: str | None = None
    max_accuracy_drop: float = 1.0
    samples: int = 300
    allow_poor_calibration: bool = False
    recover: str = "auto"
    debug_samples: int = 32


@dataclass
class ProfileResult:
    profile: str
    bundle: Path
    manifest: dict[str, Any]
    gate_passed: bool
    notes: list[str] = field(default_factory=list)


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



def convert(opts: ConvertOptions, log: Log = print) -> list[ProfileResult]:
    profiles = [load_profile(p) for p in opts.profiles]
    if not profiles:
        raise ConvertError("give at least one --profile")
    if opts.task is not None and opts.task not in TASKS:
        raise ConvertError(f"unknown task {opts.task!r}; expected one of {', '.join(TASKS)}")
    labels = _read_label_file(opts.labels)
    name = opts.name or opts.model.stem or "model"
    with tempfile.TemporaryDirectory(prefix="edge-convert-") as tmp:
        prep = prepare(opts, labels, Path(tmp), log)
        return _all_or_nothing(opts, prep, profiles, name, log)


def _all_or_nothing(opts: ConvertOptions, prep: Prepared, profiles: list[Profile], name: str,
                    log: Log) -> list[ProfileResult]:
    """Bundles are staged in a hidden folder inside ``--out`` and move in only once every
    profile converted, so a failure in the last one leaves ``--out`` as it was."""
    created = not opts.out.exists()
    opts.out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".edge-convert-", dir=opts.out))
    try:
        results = [convert_profile(opts, prep, profile, name, log, staging)
                   for profile in profiles]
        for result in results:
            final = opts.out / result.bundle.name
            replace_dir(result.bundle, final)
            result.bundle = final
        return results
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(opts.out.iterdir()):
            opts.out.rmdir()


def _read_label_file(path: Path | None) -> list[str] | None:
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
    calib_all = load_dataset(opts.calibration, class_names=labels)
    if calib_all.unreadable:
        log(f"skipped {len(calib_all.unreadable)} unreadable calibration file(s), e.g. "
            f"{calib_all.unreadable[0]}")
    class_names = labels or calib_all.class_names
    validation = (load_dataset(opts.validation, class_names=class_names)
                  if opts.validation else None)
    log(f"loading {opts.model.name} and converting the float reference …")
    float_model = work / "float.tflite"
    info = run_job({"job": "inspect", "model": str(opts.model.resolve()),
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
    _check_data(opts, chosen, spec, class_names)
    if len(evaluation) == 0:
        raise ConvertError("no samples left to verify on; give --validation or more data")
    log(f"calibration: {len(chosen)} samples from {calib_all.source}; verification: "
        f"{len(evaluation)} {basis} samples")
    calib_path = work / "calibration.npy"
    np.save(calib_path, _progress_batch(chosen, spec, "preprocessing"))
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


def _check_data(opts: ConvertOptions, data: Dataset, spec: InputSpec,
                class_names: list[str] | None) -> None:
    if not spec.is_image:
        size = int(np.prod(spec.shape))
        bad = [i for i, x in enumerate(data.items) if np.asarray(x).size != size]
        if bad:
            raise ConvertError(f"calibration sample {bad[0]} has {np.asarray(data.items[bad[0]]).size}"
                               f" values; the model input takes {size} (shape {list(spec.shape)})")
    problems = check_calibration(data, spec, class_names if data.labels is not None else None)
    if problems and not opts.allow_poor_calibration:
        raise ConvertError("calibration data refused: " + "; ".join(problems)
                           + " (override with --allow-poor-calibration)")


def _progress_batch(data: Dataset, spec: InputSpec, label: str) -> np.ndarray:
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


def convert_profile(opts: ConvertOptions, prep: Prepared, profile: Profile, name: str,
                    log: Log, out: Path) -> ProfileResult:
    log(f"[{profile.name}] {profile.quantization} (I/O {profile.io_dtype}) …")
    work = prep.work / profile.name
    work.mkdir()
    model = work / "model.tflite"
    threads = max(1, min(profile.threads, os.cpu_count() or 1))
    started = time.perf_counter()
    job = _quant_job(opts, prep, profile, model, debug=profile.quantization == "int8")
    result = run_job(job, work, "quantize")
    run = run_model(model, prep.evaluation, prep.spec, threads)
    float_latency = _float_latency(prep, threads)
    cmp = compare(prep.task, prep.float_run.outputs, run.outputs, prep.evaluation.labels)
    layers: list[dict[str, Any]] = result.get("layers") or []
    notes: list[str] = []
    recovery: dict[str, Any] | None = None
    if (cmp.drop_points > opts.max_accuracy_drop and opts.recover == "auto"
            and profile.quantization == "int8" and layers):
        recovery, model, run, cmp = _recover(opts, prep, profile, work, layers, run, cmp,
                                             threads, log)
        notes.append(recovery["summary"])
    passed = cmp.drop_points <= opts.max_accuracy_drop
    parts = BundleParts(
        name=name, version=opts.version, profile=profile, model=model, spec=run.input_spec,
        task=prep.task, class_names=prep.class_names, comparison=cmp, float_run=prep.float_run,
        quant_run=run, float_latency_ms=float_latency, layers=layers, recovery=recovery,
        calibration={"samples": len(prep.calib), "source": prep.calib.source,
                     "sha256": prep.calib.sha256},
        versions={**prep.info.get("versions", {}), "converter": __version__,
                  "runtime": _runtime_version()},
        reference_stats=reference_stats(prep.task, run.outputs, prep.class_names, prep.softmax),
        postprocess={"softmax": prep.softmax} if prep.task == "classification" else {},
        gate={"max_accuracy_drop": opts.max_accuracy_drop,
              "accuracy_drop": round(cmp.drop_points, 3), "basis": cmp.basis,
              "passed": passed},
        float_tensors=float_tensors(model) if profile.quantization == "int8" else [],
        conversion_s=time.perf_counter() - started, eval_basis=prep.eval_basis,
    )
    bundle, manifest = write_bundle(parts, out, log)
    notes += _budget_notes(profile, run)
    notes += [n for n in (one_class_note(prep), input_range_note(prep, run.input_spec)) if n]
    return ProfileResult(profile.name, bundle, manifest, passed, notes)


def input_range_note(prep: Prepared, spec: InputSpec, limit: int = 64) -> str | None:
    """An integer input whose range misses much of the real data: the calibration data did not
    look like it (e.g. dark frames), and keeping layers in float cannot fix the input."""
    if not spec.quantized or len(prep.evaluation) == 0:
        return None
    info = np.iinfo(np.dtype(spec.dtype))
    low = (info.min - spec.zero_point) * spec.scale
    high = (info.max - spec.zero_point) * spec.scale
    sample = prep.evaluation.subset(range(min(limit, len(prep.evaluation))))
    values = preprocess_batch(sample.items, spec.with_quantization("float32", 0.0, 0))
    margin = spec.scale / 2
    outside = float(np.mean((values < low - margin) | (values > high + margin)))
    if outside < INPUT_OUTSIDE_SHARE:
        return None
    return (f"the {spec.dtype} input covers [{low:.3g}, {high:.3g}] but {outside:.0%} of the "
            f"{prep.eval_basis} input values fall outside it (they span [{values.min():.3g}, "
            f"{values.max():.3g}]): calibrate on data like the real inputs")


def one_class_note(prep: Prepared) -> str | None:
    """A classifier that gives one class to nearly every sample agrees with any quantized copy
    of itself and passes the gate: say so, unless the data itself is that lopsided."""
    outputs = prep.float_run.outputs
    if prep.task != "classification" or outputs.ndim != 2 or outputs.shape[1] < 3:
        return None
    if len(outputs) < ONE_CLASS_MIN_SAMPLES:
        return None
    top = outputs.argmax(1)
    index = int(np.bincount(top).argmax())
    share = float(np.mean(top == index))
    labels = prep.evaluation.labels
    if share < ONE_CLASS_SHARE or (labels is not None and np.mean(labels == index) >= share - 0.1):
        return None
    names = prep.class_names or []
    name = names[index] if index < len(names) else str(index)
    return (f"the float model gives {name!r} to {share:.0%} of the {len(top)} {prep.eval_basis} "
            "samples: accuracy and agreement mean little for a model that does not tell classes "
            "apart; check its training and --input-mean/--input-std/--color")


def _quant_job(opts: ConvertOptions, prep: Prepared, profile: Profile, out: Path, *,
               debug: bool, denylist: list[str] | None = None) -> dict[str, Any]:
    return {
        "job": "quantize", "model": str(opts.model.resolve()), "out": str(out),
        "calibration": str(prep.calib_path), "quantization": profile.quantization,
        "io_dtype": profile.io_dtype, "debug": debug, "debug_samples": opts.debug_samples,
        "denylist": denylist or [],
    }


def _float_latency(prep: Prepared, threads: int) -> float:
    if threads == 1:
        return prep.float_run.latency_ms
    from .verify import run_model as rerun

    return rerun(prep.float_model, prep.evaluation.subset(range(min(20, len(prep.evaluation)))),
                 prep.spec, threads).latency_ms


def _recover(opts: ConvertOptions, prep: Prepared, profile: Profile, work: Path,
             layers: list[dict[str, Any]], run: ModelRun, cmp: Any, threads: int,
             log: Log) -> tuple[dict[str, Any], Path, ModelRun, Any]:
    """Keep the worst layers in float and retry; adopt the first model that passes the gate."""
    base_model = work / "model.tflite"
    attempts: list[dict[str, Any]] = []
    if not profile.constraints.allow_float_fallback:
        summary = (f"accuracy dropped {cmp.drop_points:.2f} points; profile {profile.name} "
                   "allows no float ops, so no layer can be kept in float")
        log(f"  {summary}")
        return {"attempted": False, "summary": summary, "attempts": []}, base_model, run, cmp
    ranked = sorted(layers, key=lambda r: r["rmse_over_scale"], reverse=True)
    for fraction in RECOVERY_FRACTIONS:
        count = max(1, math.ceil(len(ranked) * fraction))
        denylist = [r["tensor_name"] for r in ranked[:count]]
        log(f"  accuracy dropped {cmp.drop_points:.2f} points; retrying with the {count} worst "
            "layer(s) kept in float")
        candidate = work / f"model-recover-{count}.tflite"
        run_job(_quant_job(opts, prep, profile, candidate, debug=False, denylist=denylist),
                work, f"recover-{count}")
        new_run = run_model(candidate, prep.evaluation, prep.spec, threads)
        new_cmp = compare(prep.task, prep.float_run.outputs, new_run.outputs,
                          prep.evaluation.labels)
        attempts.append({
            "float_layers": denylist, "accuracy_drop": round(new_cmp.drop_points, 3),
            "size_bytes": new_run.size_bytes, "size_delta_bytes": new_run.size_bytes - run.size_bytes,
            "host_latency_ms": round(new_run.latency_ms, 4),
            "latency_delta_ms": round(new_run.latency_ms - run.latency_ms, 4),
        })
        if new_cmp.drop_points <= opts.max_accuracy_drop:
            base_model.unlink()
            candidate.rename(base_model)
            summary = (f"recovered: {count} layer(s) kept in float; drop {cmp.drop_points:.2f} → "
                       f"{new_cmp.drop_points:.2f} points, size {attempts[-1]['size_delta_bytes']:+d}"
                       f" B, latency {attempts[-1]['latency_delta_ms']:+.3f} ms")
            summary += float_ends_note(new_run, profile.io_dtype)
            log(f"  {summary}")
            new_run.size_bytes = base_model.stat().st_size
            return ({"attempted": True, "recovered": True, "summary": summary,
                     "attempts": attempts}, base_model, new_run, new_cmp)
    summary = (f"recovery failed: keeping up to {attempts[-1]['float_layers'].__len__()} layers in "
               f"float still drops {attempts[-1]['accuracy_drop']:.2f} points")
    log(f"  {summary}")
    return {"attempted": True, "recovered": False, "summary": summary,
            "attempts": attempts}, base_model, run, cmp


def float_ends_note(run: ModelRun, io_dtype: str) -> str:
    """What a recovered model's ends became when the layer next to them is kept in float."""
    ends = [f"{end} stays {dtype}" for end, dtype in
            (("input", run.input_spec.dtype), ("output", run.output_dtype)) if dtype != io_dtype]
    if not ends:
        return ""
    why = "the layer next to it is" if len(ends) == 1 else "the layers next to them are"
    return f"; the {' and the '.join(ends)}, not {io_dtype}, as {why} kept in float"


def _budget_notes(profile: Profile, run: ModelRun) -> list[str]:
    notes = []
    budget = profile.budgets.max_size_bytes
    if budget and run.size_bytes > budget:
        notes.append(f"model is {run.size_bytes:,} B, over the profile's {budget:,} B size budget")
    return notes


def _runtime_version() -> str:
    try:
        from importlib.metadata import version

        return f"ai-edge-litert {version('ai-edge-litert')}"
    except Exception:
        return "unknown"
