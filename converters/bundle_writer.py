"""Write a bundle (SPEC §3) atomically: build it in a temporary sibling, then rename into place."""

from __future__ import annotations

import datetime as dt
import gzip
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.bundles.manifest import LABELS, SCHEMA, sha256_file, write_manifest
from edge_runtime.monitor.golden import GOLDEN_FILE, GoldenSample, write_golden
from edge_runtime.preprocess import InputSpec

from .profiles import Profile
from .report import write_reports
from .verify import Comparison, ModelRun


@dataclass
class BundleParts:
    name: str
    version: str
    profile: Profile
    model: Path
    spec: InputSpec
    task: str
    class_names: list[str] | None
    comparison: Comparison
    float_run: ModelRun
    quant_run: ModelRun
    float_latency_ms: float
    layers: list[dict[str, Any]]
    recovery: dict[str, Any] | None
    calibration: dict[str, Any]
    versions: dict[str, Any]
    reference_stats: dict[str, Any]
    postprocess: dict[str, Any]
    gate: dict[str, Any]
    float_tensors: list[str]
    conversion_s: float
    eval_basis: str
    golden: list[GoldenSample] | None = None           # replayed by the daemon's self-test
    optimization: dict[str, Any] | None = None         # the manifest's record (SPEC §8)
    optimization_report: dict[str, Any] | None = None  # what it did, for the report


def write_bundle(parts: BundleParts, out: Path, log: Any = print) -> tuple[Path, dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{parts.name}-{parts.profile.name}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=out))
    try:
        shutil.copyfile(parts.model, tmp / "model.tflite")
        if parts.class_names:
            (tmp / LABELS).write_text("\n".join(parts.class_names) + "\n", encoding="utf-8")
        if parts.golden:
            write_golden(tmp / GOLDEN_FILE, parts.golden)
        extra = _edgetpu(parts, tmp, log)
        manifest = build_manifest(parts, tmp / "model.tflite", extra)
        write_manifest(tmp, manifest)
        write_reports(tmp, manifest, parts)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, manifest


def replace_dir(tmp: Path, final: Path) -> None:
    """Put ``tmp`` at ``final``, replacing what was there with two renames."""
    if final.exists():
        trash = final.with_name(f".{final.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        final.rename(trash)
        tmp.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(final)


def _edgetpu(parts: BundleParts, tmp: Path, log: Any) -> dict[str, Any]:
    if parts.profile.accelerator != "edgetpu":
        return {}
    from .edgetpu import compile_for_edgetpu, preflight

    report = preflight(tmp / "model.tflite", parts.profile.constraints.allowed_ops)
    for line in report.summary().splitlines():
        log(f"  edgetpu: {line}")
    compiled = compile_for_edgetpu(tmp / "model.tflite", tmp)
    if compiled.log:
        (tmp / "edgetpu_compiler.log").write_text(compiled.log, encoding="utf-8")
    log(f"  edgetpu: {compiled.message}")
    return {"edgetpu": {
        "preflight": report.to_dict(),
        "compiled": compiled.ok,
        "compiler_ran": compiled.ran,
        "model_file": compiled.output.name if compiled.output else None,
        "message": compiled.message,
    }}


def build_manifest(parts: BundleParts, model: Path, extra: dict[str, Any]) -> dict[str, Any]:
    cmp, q, f = parts.comparison, parts.quant_run, parts.float_run
    return {
        "schema": SCHEMA,
        "name": parts.name,
        "version": parts.version,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "task": parts.task,
        "model_file": "model.tflite",
        "sha256": sha256_file(model),
        "profile": {"name": parts.profile.name, **parts.profile.settings()},
        "input": parts.spec.to_manifest(),
        "outputs": _outputs(model),
        "decoder": None,
        "postprocess": parts.postprocess,
        "metrics": {
            "float_accuracy": _r(cmp.float_accuracy),
            "int8_accuracy": _r(cmp.int8_accuracy),
            "agreement": _r(cmp.agreement),
            "samples": cmp.samples,
            "evaluated_on": parts.eval_basis,
            "size_bytes": model.stat().st_size,
            "gzip_bytes": gzip_size(model),
            "float_size_bytes": f.size_bytes,
            "host_latency_ms": {"float": round(parts.float_latency_ms, 4),
                                "int8": round(q.latency_ms, 4)},
            "fully_integer": not parts.float_tensors,
            "conversion_s": round(parts.conversion_s, 2),
        },
        "calibration": parts.calibration,
        "versions": parts.versions,
        "reference_stats": parts.reference_stats,
        "gate": parts.gate,
        "recovery": parts.recovery,
        "optimization": parts.optimization or {"pruning": None, "qat": False,
                                               "distilled_from": None},
        **extra,
    }


def gzip_size(path: Path) -> int:
    """Sparse int8 weights shrink only under compression: what a packed bundle or an
    over-the-air download carries."""
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def _outputs(model: Path) -> list[dict[str, Any]]:
    from edge_runtime.backends import load_backend

    backend = load_backend(model, threads=1)
    try:
        return [{"name": o.name, "shape": list(o.shape), "dtype": o.dtype,
                 "quantization": {"scale": float(o.scale), "zero_point": int(o.zero_point)}}
                for o in backend.outputs]
    finally:
        backend.close()


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 5)
