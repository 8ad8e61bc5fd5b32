"""When the evidence says the int8 model lost too much: keep the fewest of the worst layers in
float that the evidence needs (profiles that allow float ops), with the profile's integer input
and output kept, and set the full-int8 and the recovered model side by side.

Candidates keep 1, 2, 4, … of the layers the quantization debugger ranks worst (up to a quarter
of them), all made by one TensorFlow child; the first the gate passes is adopted, else the first
it no longer fails. A candidate that does not load is recorded as such and skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.backends import load_backend

from .errors import ConvertError
from .evidence import GateDecision
from .jobs import run_job
from .options import ConvertOptions, Log
from .profiles import Profile
from .verify import Comparison, ModelRun, float_tensors

if TYPE_CHECKING:
    from .prepare import Prepared

MAX_FRACTION = 0.25


@dataclass
class Judged:
    """A model with what verification and the gate made of it."""

    model: Path
    run: ModelRun
    cmp: Comparison
    decision: GateDecision


Judge = Callable[[Path], Judged]


def quant_job(model: Path, opts: ConvertOptions, prep: Prepared, profile: Profile, out: Path, *,
              debug: bool, denylist: list[str] | None = None) -> dict[str, Any]:
    return {
        "job": "quantize", "model": str(model.resolve()), "out": str(out),
        "calibration": str(prep.calib_path), "quantization": profile.quantization,
        "io_dtype": profile.io_dtype, "debug": debug, "debug_samples": opts.debug_samples,
        "denylist": denylist or [],
    }


def denylist_sizes(layers: int) -> list[int]:
    """1, 2, 4, … up to a quarter of the layers (at least one)."""
    cap = max(1, math.ceil(layers * MAX_FRACTION))
    sizes = [1 << k for k in range(cap.bit_length()) if 1 << k < cap]
    return [*sizes, cap]


def figures(judged: Judged, float_layers: list[str]) -> dict[str, Any]:
    """One model's side of the comparison: size, agreement, accuracy, latency, what is float."""
    run, cmp, decision = judged.run, judged.cmp, judged.decision
    return {
        "size_bytes": judged.model.stat().st_size,
        "agreement": cmp.intervals().get("agreement") or cmp.intervals().get("box_agreement"),
        "float_accuracy": cmp.float_accuracy, "int8_accuracy": cmp.int8_accuracy,
        "drop_points": round(cmp.drop_points, 3),
        "gate": decision.verdict, "gate_ci95_points": decision.to_json()["ci95_points"],
        "host_latency_ms": round(run.latency_ms, 4),
        "float_layers": float_layers, "float_tensors": len(float_tensors(judged.model)),
        "input_dtype": run.input_spec.dtype, "output_dtype": run.output_dtype,
    }


def edges_of(model: Path) -> dict[str, list[float]]:
    """The full-int8 model's input and output quantization, for a recovered model to keep."""
    backend = load_backend(model, threads=1)
    try:
        return {"input": [float(backend.inputs[0].scale), int(backend.inputs[0].zero_point)],
                "output": [float(backend.outputs[0].scale), int(backend.outputs[0].zero_point)]}
    finally:
        backend.close()


def recover(source: Path, opts: ConvertOptions, prep: Prepared, profile: Profile, work: Path,
            layers: list[dict[str, Any]], base: Judged, judge: Judge, log: Log,
            ) -> tuple[dict[str, Any], Judged]:
    if not profile.constraints.allow_float_fallback:
        summary = (f"{base.decision.text()}; profile {profile.name} allows no float ops, so no "
                   "layer can be kept in float"
                   + ("" if opts.train else "; --train PATH would let it try quantization-aware "
                      "training"))
        log(f"  {summary}")
        return {"attempted": False, "summary": summary, "attempts": []}, base
    ranked = [r["tensor_name"] for r in
              sorted(layers, key=lambda r: r["rmse_over_scale"], reverse=True)]
    sizes = denylist_sizes(len(ranked))
    log(f"  {base.decision.text()}; trying {', '.join(map(str, sizes))} of the worst layer(s) "
        "in float, integer input and output kept")
    outs = [work / f"model-recover-{k}.tflite" for k in sizes]
    job = {**quant_job(source, opts, prep, profile, work / "unused.tflite", debug=False),
           "denylists": [ranked[:k] for k in sizes], "outs": [str(p) for p in outs],
           "edges": edges_of(base.model)}
    made = run_job(job, work, "recover").get("made") or [None] * len(sizes)
    attempts: list[dict[str, Any]] = []
    chosen: tuple[Judged, int] | None = None
    fallback: tuple[Judged, int] | None = None
    for size, out, error in zip(sizes, outs, made, strict=True):
        attempt: dict[str, Any] = {"float_layers": ranked[:size]}
        try:
            if error:
                raise ConvertError(error)
            judged = judge(out)
        except ConvertError as exc:
            attempts.append({**attempt, "error": str(exc)})
            log(f"  {size} in float: not usable ({exc})")
            continue
        attempts.append({**figures(judged, ranked[:size]),
                         "size_delta_bytes": judged.run.size_bytes - base.run.size_bytes,
                         "latency_delta_ms": round(judged.run.latency_ms - base.run.latency_ms,
                                                   4)})
        log(f"  {size} in float: {judged.decision.text()}")
        if judged.decision.verdict == "pass":
            chosen = judged, size
            break
        if judged.decision.verdict == "undecided" and fallback is None:
            fallback = judged, size
    chosen = chosen or fallback
    record: dict[str, Any] = {"attempted": True, "recovered": chosen is not None,
                              "attempts": attempts, "full_int8": figures(base, [])}
    if chosen is None:
        usable = [a for a in attempts if "error" not in a]
        most = usable[-1] if usable else None
        record["summary"] = (
            f"recovery failed: keeping up to {sizes[-1]} layer(s) in float "
            + (f"still drops {most['drop_points']:.2f} points" if most else
               "gave no usable model") + "; the full-int8 model is kept")
        log(f"  {record['summary']}")
        return record, base
    picked, count = chosen
    final = work / "model.tflite"
    final.unlink()
    picked.model.rename(final)
    adopted = Judged(final, picked.run, picked.cmp, picked.decision)
    adopted.run.size_bytes = final.stat().st_size
    record["recovered_model"] = figures(adopted, ranked[:count])
    record["summary"] = side_by_side(record["full_int8"], record["recovered_model"], count,
                                     adopted.run, profile.io_dtype)
    log(f"  {record['summary']}")
    return record, adopted


def side_by_side(full: dict[str, Any], recovered: dict[str, Any], count: int,
                 adopted_run: ModelRun, io_dtype: str) -> str:
    def agreement(f: dict[str, Any]) -> str:
        a = f.get("agreement") or {}
        if not a:
            return "n/a"
        return f"{a['value']:.1%} [{a['ci95'][0]:.1%}, {a['ci95'][1]:.1%}]"

    ends = float_ends_note(adopted_run, io_dtype)
    return (f"recovered with {count} layer(s) in float (gate {recovered['gate']}): "
            f"full-int8 {full['size_bytes']:,} B, agreement {agreement(full)}, "
            f"{full['host_latency_ms']:.3f} ms, drop {full['drop_points']:.2f} → recovered "
            f"{recovered['size_bytes']:,} B, agreement {agreement(recovered)}, "
            f"{recovered['host_latency_ms']:.3f} ms, drop {recovered['drop_points']:.2f} "
            f"points; {recovered['float_tensors']} float tensor(s){ends}")


def float_ends_note(run: ModelRun, io_dtype: str) -> str:
    """What a recovered model's ends became when the layer next to them is kept in float."""
    ends = [f"{end} stays {dtype}" for end, dtype in
            (("input", run.input_spec.dtype), ("output", run.output_dtype)) if dtype != io_dtype]
    if not ends:
        return ""
    why = "the layer next to it is" if len(ends) == 1 else "the layers next to them are"
    return f"; the {' and the '.join(ends)}, not {io_dtype}, as {why} kept in float"
