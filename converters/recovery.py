"""When the int8 model misses the accuracy gate: keep the worst layers in float and retry
(profiles that allow float ops), adopting the first model that passes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .jobs import run_job
from .options import ConvertOptions, Log
from .profiles import Profile
from .verify import ModelRun, compare, run_model

if TYPE_CHECKING:
    from .prepare import Prepared

RECOVERY_FRACTIONS = (0.1, 0.25)


def quant_job(model: Path, opts: ConvertOptions, prep: Prepared, profile: Profile, out: Path, *,
              debug: bool, denylist: list[str] | None = None) -> dict[str, Any]:
    return {
        "job": "quantize", "model": str(model.resolve()), "out": str(out),
        "calibration": str(prep.calib_path), "quantization": profile.quantization,
        "io_dtype": profile.io_dtype, "debug": debug, "debug_samples": opts.debug_samples,
        "denylist": denylist or [],
    }


def recover(source: Path, opts: ConvertOptions, prep: Prepared, profile: Profile,
            work: Path, layers: list[dict[str, Any]], run: ModelRun, cmp: Any, threads: int,
            log: Log) -> tuple[dict[str, Any], Path, ModelRun, Any]:
    """Keep the worst layers in float and retry; adopt the first model that passes the gate."""
    base_model = work / "model.tflite"
    attempts: list[dict[str, Any]] = []
    if not profile.constraints.allow_float_fallback:
        summary = (f"accuracy dropped {cmp.drop_points:.2f} points; profile {profile.name} "
                   "allows no float ops, so no layer can be kept in float"
                   + ("" if opts.train else "; --train PATH would let it try quantization-aware "
                      "training"))
        log(f"  {summary}")
        return {"attempted": False, "summary": summary, "attempts": []}, base_model, run, cmp
    ranked = sorted(layers, key=lambda r: r["rmse_over_scale"], reverse=True)
    for fraction in RECOVERY_FRACTIONS:
        count = max(1, math.ceil(len(ranked) * fraction))
        denylist = [r["tensor_name"] for r in ranked[:count]]
        log(f"  accuracy dropped {cmp.drop_points:.2f} points; retrying with the {count} worst "
            "layer(s) kept in float")
        candidate = work / f"model-recover-{count}.tflite"
        run_job(quant_job(source, opts, prep, profile, candidate, debug=False,
                          denylist=denylist),
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

