"""``edge-convert convert``: load → calibrate → (optimize) → quantize → verify → (recover) →
package.

Every profile is validated before any work starts. TensorFlow runs only in child processes
(``converters.child``); this process does data, verification on LiteRT and packaging.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.bundles.manifest import TASKS

from . import __version__
from .bundle_writer import BundleParts, replace_dir, write_bundle
from .errors import ConvertError
from .jobs import run_job
from .notes import budget_notes, input_range_note, one_class_note
from .optimize import plan
from .options import ConvertOptions, Log
from .prepare import Prepared, prepare, read_label_file
from .profiles import Profile, load_profile
from .recovery import quant_job, recover
from .verify import compare, float_tensors, run_model
from .watchref import record_golden, watch_reference

__all__ = ["ConvertOptions", "ProfileResult", "convert", "convert_profile"]


@dataclass
class ProfileResult:
    profile: str
    bundle: Path
    manifest: dict[str, Any]
    gate_passed: bool
    notes: list[str] = field(default_factory=list)


def convert(opts: ConvertOptions, log: Log = print) -> list[ProfileResult]:
    profiles = load_profiles(opts)
    labels = read_label_file(opts.labels)
    name = opts.name or opts.model.stem or "model"
    with tempfile.TemporaryDirectory(prefix="edge-convert-") as tmp:
        prep = prepare(opts, labels, Path(tmp), log)
        prep.optimized = plan.optimize_model(opts, prep, profiles, log)
        return _all_or_nothing(opts, prep, profiles, name, log)


def load_profiles(opts: ConvertOptions) -> list[Profile]:
    """Profiles and the request checked before any TensorFlow process starts."""
    profiles = [load_profile(p) for p in opts.profiles]
    if not profiles:
        raise ConvertError("give at least one --profile")
    if opts.task is not None and opts.task not in TASKS:
        raise ConvertError(f"unknown task {opts.task!r}; expected one of {', '.join(TASKS)}")
    plan.check_request(opts, profiles)
    return profiles


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


def convert_profile(opts: ConvertOptions, prep: Prepared, profile: Profile, name: str,
                    log: Log, out: Path) -> ProfileResult:
    log(f"[{profile.name}] {profile.quantization} (I/O {profile.io_dtype}) …")
    opt: plan.Optimized = prep.optimized or plan.Optimized(opts.model, {
        "pruning": None, "qat": False, "distilled_from": None})
    work = prep.work / f"{name}-{profile.name}"
    work.mkdir()
    model = work / "model.tflite"
    threads = max(1, min(profile.threads, os.cpu_count() or 1))
    started = time.perf_counter()
    layers: list[dict[str, Any]] = []
    if opt.qat_models:
        plan.quantize_qat(opt, profile, model)
    else:
        job = quant_job(opt.source, opts, prep, profile, model,
                        debug=profile.quantization == "int8")
        layers = run_job(job, work, "quantize").get("layers") or []
    run = run_model(model, prep.evaluation, prep.spec, threads)
    float_latency = _float_latency(prep, threads)
    cmp = compare(prep.task, prep.float_run.outputs, run.outputs, prep.evaluation.labels)
    notes: list[str] = []
    recovery: dict[str, Any] | None = None
    if (cmp.drop_points > opts.max_accuracy_drop and opts.recover == "auto"
            and profile.quantization == "int8"):
        if (not profile.constraints.allow_float_fallback and opts.train is not None
                and not opt.qat_models):
            recovery, run, cmp = plan.recover_with_qat(opts, prep, profile, opt, work, model, run,
                                                       cmp, threads, log)
        elif layers or not profile.constraints.allow_float_fallback:
            recovery, model, run, cmp = recover(opt.source, opts, prep, profile, work, layers,
                                                run, cmp, threads, log)
        if recovery is not None:
            notes.append(recovery["summary"])
    passed = cmp.drop_points <= opts.max_accuracy_drop
    plain = plan.baseline(opts, prep, profile, work, threads) if opt.changed else None
    optimization = plan.effect(opt, plain, plan.figures_of(model, run, cmp))
    parts = BundleParts(
        name=name, version=opts.version, profile=profile, model=model, spec=run.input_spec,
        task=prep.task, class_names=prep.class_names, comparison=cmp, float_run=prep.float_run,
        quant_run=run, float_latency_ms=float_latency, layers=layers, recovery=recovery,
        calibration={"samples": len(prep.calib), "source": prep.calib.source,
                     "sha256": prep.calib.sha256},
        versions={**prep.info.get("versions", {}), "converter": __version__,
                  "runtime": _runtime_version()},
        reference_stats=watch_reference(prep.task, run.outputs, prep.class_names, prep.softmax,
                                        prep.evaluation, run.input_spec),
        golden=record_golden(model, prep.evaluation, run.input_spec) if opts.golden else None,
        postprocess={"softmax": prep.softmax} if prep.task == "classification" else {},
        gate={"max_accuracy_drop": opts.max_accuracy_drop,
              "accuracy_drop": round(cmp.drop_points, 3), "basis": cmp.basis,
              "passed": passed},
        float_tensors=float_tensors(model) if profile.quantization == "int8" else [],
        conversion_s=time.perf_counter() - started, eval_basis=prep.eval_basis,
        optimization=dict(opt.record), optimization_report=optimization,
    )
    bundle, manifest = write_bundle(parts, out, log)
    notes += optimization["summary"]
    notes += budget_notes(profile, run)
    notes += [n for n in (one_class_note(prep), input_range_note(prep, run.input_spec)) if n]
    return ProfileResult(profile.name, bundle, manifest, passed, notes)


def _float_latency(prep: Prepared, threads: int) -> float:
    if threads == 1:
        return prep.float_run.latency_ms
    return run_model(prep.float_model,
                     prep.evaluation.subset(range(min(20, len(prep.evaluation)))),
                     prep.spec, threads).latency_ms


def _runtime_version() -> str:
    try:
        from importlib.metadata import version

        return f"ai-edge-litert {version('ai-edge-litert')}"
    except Exception:
        return "unknown"
