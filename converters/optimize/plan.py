"""What ``convert --prune/--qat`` does before and around the usual int8 conversion.

Pruning gives a new float Keras model that every profile then quantizes as usual. QAT gives
fully integer models straight from the fine-tuned graph, one per I/O type the profiles need.
Each profile also converts the user's model plainly, so the report shows what the optimization
did to size, accuracy and latency.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bundle_writer import gzip_size
from ..errors import ConvertError
from ..jobs import run_job
from ..options import ConvertOptions, Log
from ..prepare import Prepared
from ..profiles import Profile
from ..verify import Comparison, ModelRun, compare, run_model
from .provenance import distilled_from
from .trainset import check_labelled, evaluation_arrays, training_arrays

DEFAULT_EPOCHS = {"prune": 4, "qat": 2}
SPARSITY_NOTE = ("sparse weights shrink the model only under compression (see the gzip size); "
                 "XNNPACK runs sparse int8 kernels no faster than dense ones")


@dataclass
class Optimized:
    source: Path                           # the float Keras model every profile quantizes
    record: dict[str, Any]                 # the manifest's "optimization" (SPEC §8)
    details: dict[str, Any] = field(default_factory=dict)
    qat_models: dict[str, Path] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.record["pruning"] or self.record["qat"] or self.details.get("student"))


def check_request(opts: ConvertOptions, profiles: list[Profile]) -> None:
    """Refuse a request that cannot work before any TensorFlow process starts."""
    if opts.prune is not None and not 0.0 < opts.prune < 1.0:
        raise ConvertError(f"--prune {opts.prune:g}: the sparsity must be between 0 and 1 "
                           "(e.g. 0.5)")
    if (opts.prune is not None or opts.qat) and opts.train is None:
        raise ConvertError(f"{'--prune' if opts.prune is not None else '--qat'} needs labelled "
                           "training data: give --train PATH")
    if opts.train is not None:
        check_labelled(opts.train)
    if opts.prune_block < 1:
        raise ConvertError("--prune-block must be at least 1")
    if opts.epochs is not None and opts.epochs < 1:
        raise ConvertError("--epochs must be at least 1")
    if opts.qat:
        floats = [p for p in profiles if p.quantization != "int8"]
        if floats:
            raise ConvertError(f"--qat makes a fully integer model, but profile {floats[0].name} "
                               f"quantizes to {floats[0].quantization}; drop --qat or that profile")


def optimize_model(opts: ConvertOptions, prep: Prepared, profiles: list[Profile],
                   log: Log) -> Optimized:
    record: dict[str, Any] = {"pruning": None, "qat": False,
                              "distilled_from": distilled_from(opts.model)}
    opt = Optimized(opts.model, record)
    if opts.reference_model != opts.model:
        opt.details["student"] = {"model": opts.model.name}
    if opts.prune is not None:
        opt.source = _prune(opts, prep, opt, log)
    if opts.qat:
        io_dtypes: list[str] = sorted({p.io_dtype for p in profiles})
        opt.qat_models = run_qat(opts, prep, opt.source, io_dtypes, log,
                                 preserve_sparsity=opts.prune is not None, details=opt.details)
        record["qat"] = True
    return opt


def _prune(opts: ConvertOptions, prep: Prepared, opt: Optimized, log: Log) -> Path:
    assert opts.prune is not None
    epochs = opts.epochs or DEFAULT_EPOCHS["prune"]
    out = prep.work / f"pruned-{round(opts.prune * 100)}.keras"
    log(f"pruning to {opts.prune:.0%} sparsity, fine-tuning {epochs} epoch(s) …")
    result = run_job({"job": "prune", "model": str(opts.model.resolve()), "out": str(out),
                      "train": str(training_arrays(opts, prep, log)),
                      "evaluation": _optional(evaluation_arrays(prep)),
                      "sparsity": opts.prune, "epochs": epochs, "from_logits": prep.softmax,
                      "block": opts.prune_block},
                     prep.work, f"prune-{round(opts.prune * 100)}")
    opt.record["pruning"] = {"target": opts.prune, "achieved": result["achieved"],
                             "epochs": epochs, "block": opts.prune_block}
    opt.details["pruning"] = result
    log(f"  sparsity achieved {result['achieved']:.1%} over {len(result['layers'])} layer(s); "
        f"float accuracy {_pct(result.get('accuracy_before'))} → "
        f"{_pct(result.get('accuracy_after'))}")
    return out


def run_qat(opts: ConvertOptions, prep: Prepared, model: Path, io_dtypes: list[str], log: Log,
            *, preserve_sparsity: bool, details: dict[str, Any]) -> dict[str, Path]:
    """Quantization-aware fine-tuning of ``model``; one fully integer model per I/O type."""
    epochs = opts.epochs or DEFAULT_EPOCHS["qat"]
    log(f"quantization-aware training, {epochs} epoch(s) …")
    tag = f"qat-{len(list(prep.work.glob('qat-*.job.json')))}"
    outs = {io: prep.work / f"{tag}-{io}.tflite" for io in io_dtypes}
    result = run_job({"job": "qat", "model": str(model.resolve()),
                      "train": str(training_arrays(opts, prep, log)),
                      "evaluation": _optional(evaluation_arrays(prep)),
                      "calibration": str(prep.calib_path), "epochs": epochs,
                      "from_logits": prep.softmax, "preserve_sparsity": preserve_sparsity,
                      "outputs": {io: str(path) for io, path in outs.items()}},
                     prep.work, tag)
    details["qat"] = {k: v for k, v in result.items() if k != "versions"}
    return outs


def quantize_qat(opt: Optimized, profile: Profile, model: Path) -> None:
    shutil.copyfile(opt.qat_models[profile.io_dtype], model)


def baseline(opts: ConvertOptions, prep: Prepared, profile: Profile, work: Path,
             threads: int) -> dict[str, Any]:
    """The user's model quantized plainly for this profile: what the optimization is against."""
    from ..recovery import quant_job

    cached = prep.cache.get(f"baseline/{profile.name}")
    if cached is not None:
        return dict(cached)
    model = work / "plain.tflite"
    run_job(quant_job(opts.reference_model, opts, prep, profile, model, debug=False), work,
            "plain")
    run = run_model(model, prep.evaluation, prep.spec, threads)
    cmp = compare(prep.task, prep.float_run.outputs, run.outputs, prep.evaluation.labels)
    figures = figures_of(model, run, cmp)
    prep.cache[f"baseline/{profile.name}"] = figures
    return figures


def figures_of(model: Path, run: ModelRun, cmp: Comparison) -> dict[str, Any]:
    return {"size_bytes": model.stat().st_size, "gzip_bytes": gzip_size(model),
            "accuracy": cmp.int8_accuracy, "agreement": round(cmp.agreement, 5),
            "accuracy_drop": round(cmp.drop_points, 3),
            "host_latency_ms": round(run.latency_ms, 4)}


def effect(opt: Optimized, plain: dict[str, Any] | None, final: dict[str, Any]) -> dict[str, Any]:
    """What the optimization did, against the plain int8 conversion of the user's model."""
    report: dict[str, Any] = {**opt.details, "optimized": final, "plain": plain}
    lines = []
    if plain is not None:
        lines.append(
            f"size {plain['size_bytes']:,} → {final['size_bytes']:,} B raw, "
            f"{plain['gzip_bytes']:,} → {final['gzip_bytes']:,} B gzipped "
            f"(×{final['gzip_bytes'] / max(1, plain['gzip_bytes']):.2f}); accuracy "
            f"{_pct(plain['accuracy'])} → {_pct(final['accuracy'])}; host latency "
            f"{plain['host_latency_ms']:.3f} → {final['host_latency_ms']:.3f} ms, "
            "against the plain int8 conversion")
    if opt.record["pruning"]:
        lines.append(SPARSITY_NOTE)
    report["summary"] = lines
    return report


def recover_with_qat(opts: ConvertOptions, prep: Prepared, profile: Profile, opt: Optimized,
                     work: Path, model: Path, run: ModelRun, cmp: Comparison, threads: int,
                     log: Log) -> tuple[dict[str, Any], ModelRun, Comparison]:
    """No float op is allowed (Edge TPU): fine-tune with quantization in the loop instead."""
    log(f"  accuracy dropped {cmp.drop_points:.2f} points; profile {profile.name} allows no "
        "float ops: retrying with quantization-aware training on --train")
    outs = run_qat(opts, prep, opt.source, [profile.io_dtype], log,
                   preserve_sparsity=opt.record["pruning"] is not None, details=opt.details)
    candidate = outs[profile.io_dtype]
    new_run = run_model(candidate, prep.evaluation, prep.spec, threads)
    new_cmp = compare(prep.task, prep.float_run.outputs, new_run.outputs, prep.evaluation.labels)
    gained = cmp.drop_points - new_cmp.drop_points
    attempt = {"method": "qat", "accuracy_drop": round(new_cmp.drop_points, 3),
               "gained_points": round(gained, 3), "size_bytes": new_run.size_bytes,
               "host_latency_ms": round(new_run.latency_ms, 4)}
    if gained > 0:
        shutil.copyfile(candidate, model)
        opt.record["qat"] = True
        verdict = "recovered" if new_cmp.drop_points <= opts.max_accuracy_drop else "improved"
        summary = (f"{verdict} by quantization-aware training: drop {cmp.drop_points:.2f} → "
                   f"{new_cmp.drop_points:.2f} points ({gained:+.2f} gained), fully integer")
        log(f"  {summary}")
        return ({"attempted": True, "recovered": verdict == "recovered", "summary": summary,
                 "attempts": [attempt]}, new_run, new_cmp)
    summary = (f"recovery failed: quantization-aware training still drops "
               f"{new_cmp.drop_points:.2f} points (plain int8: {cmp.drop_points:.2f})")
    log(f"  {summary}")
    return ({"attempted": True, "recovered": False, "summary": summary, "attempts": [attempt]},
            run, cmp)


def _optional(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f}%"
