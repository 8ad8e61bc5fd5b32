"""``edge-convert sweep``: every optimization, and the combinations that make sense, for one
profile, each through the gate against the original float model; every bundle kept.

The data are prepared once (one float reference, one training set) and each variant then runs
the same per-profile conversion ``convert`` runs, so a sweep's bundle is what ``convert`` with the
same flags would write.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..convert import _all_or_nothing, load_profiles
from ..errors import ConvertError
from ..options import ConvertOptions, Log
from ..prepare import Prepared, prepare, read_label_file
from . import plan
from .distill_cmd import DistillOptions, distill_prepared
from .provenance import read_provenance
from .sweep_report import mark_fronts, recommend, sweep_table, write_sweep


@dataclass
class SweepOptions:
    model: Path
    profile: str
    train: Path
    validation: Path
    out: Path
    calibration: Path | None = None
    labels: Path | None = None
    name: str | None = None
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    color: str | None = None
    prune: list[float] = field(default_factory=lambda: [0.5, 0.75])
    qat: bool = False
    distill_width: float | None = None
    student: Path | None = None
    epochs: int | None = None
    max_accuracy_drop: float = 1.0


@dataclass
class Variant:
    name: str
    model: Path
    prune: float | None = None
    qat: bool = False


def variants(opts: SweepOptions, student: Path | None) -> list[Variant]:
    """Plain PTQ, each prune level, QAT, pruning then QAT (sparsity kept), and the student
    alone, pruned and with QAT."""
    found = [Variant("ptq", opts.model)]
    found += [Variant(f"prune{round(s * 100)}", opts.model, prune=s) for s in opts.prune]
    if opts.qat:
        found.append(Variant("qat", opts.model, qat=True))
        found += [Variant(f"prune{round(s * 100)}+qat", opts.model, prune=s, qat=True)
                  for s in opts.prune]
    if student is not None:
        found.append(Variant("student", student))
        found += [Variant(f"student+prune{round(s * 100)}", student, prune=s) for s in opts.prune]
        if opts.qat:
            found.append(Variant("student+qat", student, qat=True))
    return found


def sweep(opts: SweepOptions, log: Log = print) -> dict[str, Any]:
    if opts.student is not None and opts.distill_width is not None:
        raise ConvertError("give --student FILE or --distill-width F, not both")
    name = opts.name or opts.model.stem or "model"
    base = ConvertOptions(
        model=opts.model, profiles=[opts.profile], calibration=opts.calibration or opts.train,
        out=opts.out, validation=opts.validation, labels=opts.labels, name=name,
        input_mean=opts.input_mean, input_std=opts.input_std, color=opts.color,
        max_accuracy_drop=opts.max_accuracy_drop, train=opts.train, epochs=opts.epochs)
    for level in opts.prune:
        plan.check_request(replace(base, prune=level), [])
    profiles = load_profiles(replace(base, qat=opts.qat))
    labels = read_label_file(opts.labels)
    with tempfile.TemporaryDirectory(prefix="edge-sweep-") as tmp:
        prep = prepare(base, labels, Path(tmp), log)
        student = opts.student or _distilled(opts, base, prep, name, log)
        rows = [_run(base, prep, profiles, variant, name, log)
                for variant in variants(opts, student)]
    mark_fronts(rows)
    result = {"schema": "edge-sweep/1", "model": str(opts.model), "profile": opts.profile,
              "max_accuracy_drop": opts.max_accuracy_drop,
              "float_accuracy": rows[0].get("float_accuracy") if rows else None,
              "evaluated_on": f"{len(prep.evaluation)} {prep.eval_basis} samples",
              "variants": rows, "recommended": recommend(rows)}
    write_sweep(opts.out, result)
    return result


def _distilled(opts: SweepOptions, base: ConvertOptions, prep: Prepared, name: str,
               log: Log) -> Path | None:
    if opts.distill_width is None:
        return None
    out = opts.out / f"{name}-student-w{opts.distill_width:g}.keras"
    distill_prepared(DistillOptions(
        teacher=opts.model, train=opts.train, validation=opts.validation, out=out,
        width=opts.distill_width, labels=opts.labels, input_mean=opts.input_mean,
        input_std=opts.input_std, color=opts.color), base, prep, log)
    return out


def _run(base: ConvertOptions, prep: Prepared, profiles: list[Any], variant: Variant,
         name: str, log: Log) -> dict[str, Any]:
    log(f"── variant {variant.name} ──")
    opts = replace(base, model=variant.model, prune=variant.prune, qat=variant.qat,
                   reference=base.model if variant.model != base.model else None,
                   name=f"{name}-{variant.name.replace('+', '-')}")
    row: dict[str, Any] = {"variant": variant.name, "model": str(variant.model)}
    try:
        prep.optimized = plan.optimize_model(opts, prep, profiles, log)
        result = _all_or_nothing(opts, prep, profiles, opts.name or name, log)[0]
    except ConvertError as exc:
        log(f"  {variant.name} failed: {exc}")
        return {**row, "error": str(exc), "gate_passed": False, "gate": "error"}
    metrics = result.manifest["metrics"]
    if variant.name == "ptq":
        prep.cache[f"baseline/{profiles[0].name}"] = _as_baseline(metrics)
    params = _params(base, variant, result.bundle, prep)
    return {**row, "bundle": str(result.bundle), "gate_passed": result.gate_passed,
            "gate": result.gate_status, "gate_ci95_points": result.manifest["gate"].get(
                "ci95_points"),
            "accuracy": metrics["int8_accuracy"], "float_accuracy": metrics["float_accuracy"],
            "agreement": metrics["agreement"], "accuracy_drop": result.manifest["gate"][
                "accuracy_drop"],
            "size_bytes": metrics["size_bytes"], "gzip_bytes": metrics["gzip_bytes"],
            "host_latency_ms": metrics["host_latency_ms"]["int8"],
            "fully_integer": metrics["fully_integer"], **params,
            "optimization": result.manifest["optimization"]}


def _as_baseline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"size_bytes": metrics["size_bytes"], "gzip_bytes": metrics["gzip_bytes"],
            "accuracy": metrics["int8_accuracy"], "agreement": metrics["agreement"],
            "accuracy_drop": None, "host_latency_ms": metrics["host_latency_ms"]["int8"]}


def _params(base: ConvertOptions, variant: Variant, bundle: Path, prep: Prepared,
            ) -> dict[str, Any]:
    params = prep.info.get("params")
    if variant.model != base.model:
        params = (read_provenance(variant.model) or {}).get("student", {}).get("params")
    report = json.loads((bundle / "report.json").read_text())
    layers = ((report.get("optimization") or {}).get("pruning") or {}).get("layers") or []
    zeros = round(sum(layer["weights"] * layer["sparsity"] for layer in layers))
    return {"params": params, "nonzero_params": None if params is None else params - zeros}


__all__ = ["SweepOptions", "sweep", "sweep_table"]
