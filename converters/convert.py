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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_runtime.bundles.manifest import TASKS

from . import __version__
from .bundle_writer import BundleParts, replace_dir, write_bundle
from .detection import (
    collapse_problems,
    compare_detections,
    decoder_record,
    detect_all,
    load_truths,
    predicted_collapse,
)
from .errors import ConvertError
from .gate import calibration_agreement, gate_section, no_recovery_reason
from .gate import judge as judge_gate
from .jobs import run_job
from .notes import budget_notes, input_range_note, one_class_note
from .optimize import plan
from .options import ConvertOptions, Log
from .prepare import Prepared, prepare, read_label_file
from .profiles import Profile, load_profile
from .recovery import Judge, Judged, quant_job, recover
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
    gate_status: str = "pass"       # pass | fail | undecided


def convert(opts: ConvertOptions, log: Log = print) -> list[ProfileResult]:
    profiles = load_profiles(opts)
    labels = read_label_file(opts.labels)
    name = opts.name or opts.model.stem or "model"
    with tempfile.TemporaryDirectory(prefix="edge-convert-") as tmp:
        prep = prepare(opts, labels, Path(tmp), log)
        setup_detection(opts, prep, profiles)
        prep.optimized = plan.optimize_model(opts, prep, profiles, log)
        return _all_or_nothing(opts, prep, profiles, name, log)


def load_profiles(opts: ConvertOptions) -> list[Profile]:
    """Profiles and the request checked before any TensorFlow process starts."""
    profiles = [load_profile(p) for p in opts.profiles]
    if not profiles:
        raise ConvertError("give at least one --profile")
    if opts.task is not None and opts.task not in TASKS:
        raise ConvertError(f"unknown task {opts.task!r}; expected one of {', '.join(TASKS)}")
    if opts.decoder is not None or opts.decoder_params or opts.boxes is not None:
        if opts.task not in (None, "detection"):
            raise ConvertError(f"--decoder, --decoder-param and --boxes are for --task "
                               f"detection, not {opts.task}")
        opts.task = "detection"
    plan.check_request(opts, profiles)
    return profiles


def setup_detection(opts: ConvertOptions, prep: Prepared, profiles: list[Profile]) -> None:
    """A detector's decoder (checked against its outputs), its evaluation ground truth, and,
    before anything is quantized, the range-collapse check on its calibration outputs."""
    if prep.task != "detection":
        return
    from edge_runtime.backends import load_backend
    from edge_runtime.postprocess import OutputInfo

    backend = load_backend(prep.float_model, threads=1)
    try:
        outputs = [OutputInfo(o.name, tuple(o.shape), o.dtype, o.scale, o.zero_point)
                   for o in backend.outputs]
    finally:
        backend.close()
    labels = prep.class_names or []
    prep.decoder = decoder_record(opts.decoder, opts.decoder_params, outputs, labels, prep.spec)
    root = opts.validation if opts.validation is not None else opts.calibration
    prep.truths = load_truths(prep.evaluation, root, opts.boxes, labels)
    if any(p.quantization == "int8" for p in profiles):
        calibration = run_model(prep.float_model, prep.calib, prep.spec, latency_runs=1)
        problem = predicted_collapse(prep.float_model, calibration.outputs, prep.decoder, labels)
        if problem:
            raise ConvertError(f"refused before quantizing: {problem}")


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
    _refuse_collapsed(prep, profile, model)
    judge = make_judge(opts, prep, threads)
    current = judge(model)
    float_latency = _float_latency(prep, threads)
    notes: list[str] = []
    recovery = _maybe_recover(opts, prep, profile, opt, work, layers, current, judge, log)
    if recovery is not None:
        record, current = recovery
        notes.append(record["summary"])
        recovery_record: dict[str, Any] | None = record
    else:
        recovery_record = None
        if current.decision.verdict != "pass":
            notes.append(no_recovery_reason(current.decision) if opts.recover == "auto" else
                         "no recovery: --recover off")
    run, cmp, decision = current.run, current.cmp, current.decision
    notes.insert(0, decision.text())
    intervals = cmp.intervals()
    calibration = _calibration_agreement(prep, model, threads)
    if calibration is not None:
        intervals["calibration_agreement"] = calibration
        notes.insert(1, f"agreement on all {calibration['n']} calibration samples (they set "
                        f"the ranges, so beside the gate): {calibration['text']}")
    plain = plan.baseline(opts, prep, profile, work, threads) if opt.changed else None
    optimization = plan.effect(opt, plain, plan.figures_of(model, run, cmp))
    parts = BundleParts(
        name=name, version=opts.version, profile=profile, model=model, spec=run.input_spec,
        task=prep.task, class_names=prep.class_names, comparison=cmp, float_run=prep.float_run,
        quant_run=run, float_latency_ms=float_latency, layers=layers, recovery=recovery_record,
        calibration={"samples": len(prep.calib), "source": prep.calib.source,
                     "sha256": prep.calib.sha256},
        versions={**prep.info.get("versions", {}), "converter": __version__,
                  "runtime": _runtime_version()},
        reference_stats=watch_reference(prep.task, run.outputs, prep.class_names, prep.softmax,
                                        prep.evaluation, run.input_spec,
                                        prep.cache.get(f"detections:{model}")),
        golden=record_golden(model, prep.evaluation, run.input_spec) if opts.golden else None,
        postprocess={"softmax": prep.softmax} if prep.task == "classification" else {},
        gate=gate_section(decision, cmp, opts.max_accuracy_drop),
        float_tensors=float_tensors(model) if profile.quantization == "int8" else [],
        conversion_s=time.perf_counter() - started, eval_basis=prep.eval_basis,
        optimization=dict(opt.record), optimization_report=optimization,
        decoder=prep.decoder, intervals=intervals,
    )
    bundle, manifest = write_bundle(parts, out, log)
    notes += optimization["summary"]
    notes += budget_notes(profile, run)
    notes += [n for n in (one_class_note(prep), input_range_note(prep, run.input_spec)) if n]
    return ProfileResult(profile.name, bundle, manifest, decision.verdict == "pass", notes,
                         decision.verdict)


def make_judge(opts: ConvertOptions, prep: Prepared, threads: int) -> Judge:
    """Verification and the gate for any model made from the float reference."""

    def judge(model: Path) -> Judged:
        run = run_model(model, prep.evaluation, prep.spec, threads)
        if prep.task == "detection":
            assert prep.decoder is not None
            labels = prep.class_names or []
            floats = prep.cache.get("float_detections")
            if floats is None:
                floats = detect_all(prep.float_model, prep.evaluation, prep.spec, prep.decoder,
                                    labels)
                prep.cache["float_detections"] = floats
            int8 = detect_all(model, prep.evaluation, prep.spec, prep.decoder, labels, threads)
            prep.cache[f"detections:{model}"] = int8   # the reference counts them per frame
            cmp = compare_detections(floats, int8, prep.truths, len(labels) or 1)
        else:
            cmp = compare(prep.task, prep.float_run.outputs, run.outputs, prep.evaluation.labels)
        return Judged(model, run, cmp, judge_gate(cmp, opts.max_accuracy_drop))

    return judge


def _maybe_recover(opts: ConvertOptions, prep: Prepared, profile: Profile, opt: plan.Optimized,
                   work: Path, layers: list[dict[str, Any]], current: Judged, judge: Judge,
                   log: Log) -> tuple[dict[str, Any], Judged] | None:
    """Recovery only on evidence of a drop over the limit, and only where it can help."""
    if (current.decision.verdict != "fail" or opts.recover != "auto"
            or profile.quantization != "int8"):
        return None
    broken = input_range_note(prep, current.run.input_spec)
    if broken:
        summary = (f"no recovery: the {current.run.input_spec.dtype} input itself is broken "
                   f"({broken.split(':')[0]}); no layer kept in float can undo that")
        log(f"  {current.decision.text()}; {summary}")
        return {"attempted": False, "skipped": "input", "summary": summary,
                "attempts": []}, current
    if (not profile.constraints.allow_float_fallback and opts.train is not None
            and not opt.qat_models):
        threads = max(1, min(profile.threads, os.cpu_count() or 1))
        record, _, _ = plan.recover_with_qat(opts, prep, profile, opt, work, current.model,
                                             current.run, current.cmp, threads, log)
        return record, judge(current.model)
    if layers or not profile.constraints.allow_float_fallback:
        return recover(opt.source, opts, prep, profile, work, layers, current, judge, log)
    return None


def _refuse_collapsed(prep: Prepared, profile: Profile, model: Path) -> None:
    if prep.task != "detection" or prep.decoder is None or profile.quantization != "int8":
        return
    problems = collapse_problems(model, prep.float_run.outputs, prep.decoder,
                                 prep.class_names or [])
    if problems:
        raise ConvertError(f"[{profile.name}] {problems[0]}")


def _calibration_agreement(prep: Prepared, model: Path, threads: int) -> dict[str, Any] | None:
    """Without --validation: agreement on every calibration sample too (no labels needed)."""
    if prep.eval_basis != "held-out" or prep.task != "classification":
        return None
    every = prep.cache.get("every_calibration")
    if every is None:
        data = prep.calib
        items = [*data.items, *prep.evaluation.items]
        every = (replace(data, items=items, labels=None, refs=[]),)
        every += (run_model(prep.float_model, every[0], prep.spec),)
        prep.cache["every_calibration"] = every
    data, float_run = every
    run = run_model(model, data, prep.spec, threads, latency_runs=1)
    return calibration_agreement(compare(prep.task, float_run.outputs, run.outputs, None))


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
