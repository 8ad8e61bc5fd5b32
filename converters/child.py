"""TensorFlow work, run in a child process (the TF converter leaks memory on every call).

``python -m converters.child JOB.json`` reads a job, does it, and writes ``JOB.json.result``:
either the job's result or ``{"error": "one line"}``. Nothing else in the project imports
TensorFlow; the parent keeps to LiteRT and NumPy.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from converters.tfjob import JobError
from converters.tfjob import one_line as _one_line
from converters.tflite import (
    configure,
    convert,
    load_model,
    make_converter,
    representative,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


def describe_keras(kind: str, model: Any) -> dict[str, Any]:
    if kind != "keras":
        return {"kind": kind, "name": Path(str(model)).name}
    return {
        "kind": kind,
        "name": model.name,
        "inputs": [list(i.shape) for i in model.inputs],
        "outputs": [list(o.shape) for o in model.outputs],
        "params": int(model.count_params()),
    }


def job_inspect(job: dict[str, Any]) -> dict[str, Any]:
    """Load the model, describe it and write the float32 reference ``.tflite``."""
    kind, model = load_model(Path(job["model"]))
    info = describe_keras(kind, model)
    converter = make_converter(kind, model)
    data = convert(converter)
    out = Path(job["out"])
    out.write_bytes(data)
    info["float_tflite"] = str(out)
    info["versions"] = _versions()
    return info


def job_quantize(job: dict[str, Any]) -> dict[str, Any]:
    """Convert for one profile; optionally run the quantization debugger on a subset."""
    import numpy as np

    kind, model = load_model(Path(job["model"]))
    samples = np.load(job["calibration"]) if job.get("calibration") else None
    quantization, io_dtype = job["quantization"], job["io_dtype"]
    dataset = representative(samples, "calibrating") if samples is not None else None
    if quantization == "int8" and samples is None:
        raise JobError("int8 quantization needs calibration data")
    if job.get("denylists"):
        return {"made": [_candidate(kind, model, samples, job, denylist, out) for denylist, out
                         in zip(job["denylists"], job["outs"], strict=True)]}
    converter = make_converter(kind, model)
    configure(converter, quantization, io_dtype, dataset)
    denylist = list(job.get("denylist") or [])
    if denylist:
        data = _selective(converter, samples, denylist, job.get("debug_samples", 32), io_dtype)
    else:
        data = convert(converter)
    Path(job["out"]).write_bytes(data)
    result: dict[str, Any] = {"out": job["out"], "size_bytes": len(data), "denylist": denylist}
    if job.get("debug") and quantization == "int8" and samples is not None:
        converter = make_converter(kind, model)
        configure(converter, quantization, "float32",
                  representative(samples, "calibrating (debug)"))
        result["layers"] = _layer_stats(converter, samples, job.get("debug_samples", 32))
    return result


def _candidate(kind: str, model: Any, samples: Any, job: dict[str, Any], denylist: list[str],
               out: str) -> str | None:
    """One recovery candidate with ``denylist`` kept in float and the profile's integer ends;
    the one-line reason when it cannot be made."""
    from converters.io_edges import integer_ends

    try:
        converter = make_converter(kind, model)
        configure(converter, "int8", job["io_dtype"], representative(samples, "calibrating"))
        data = _selective(converter, samples, denylist, job.get("debug_samples", 32),
                          job["io_dtype"])
        Path(out).write_bytes(integer_ends(data, job["io_dtype"], job["edges"]))
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {_one_line(exc)}"


def _debug_dataset(samples: Any, limit: int) -> Callable[[], Iterator[list[Any]]]:
    subset = samples[: max(1, min(limit, len(samples)))]
    return representative(subset, "debugging layers")


def _layer_stats(converter: Any, samples: Any, limit: int) -> list[dict[str, Any]]:
    import tensorflow as tf

    with contextlib.redirect_stdout(io.StringIO()):
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=_debug_dataset(samples, limit))
        debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    layers = []
    for row in rows:
        scale = float(row.get("scale") or 0.0)
        mse = float(row.get("mean_squared_error") or 0.0)
        layers.append({
            "tensor_name": row.get("tensor_name", ""),
            "op_name": row.get("op_name", ""),
            "tensor_idx": int(float(row.get("tensor_idx") or -1)),
            "scale": scale,
            "zero_point": int(float(row.get("zero_point") or 0)),
            "rmse_over_scale": (mse ** 0.5) / scale if scale > 0 else 0.0,
            "mean_abs_error": abs(float(row.get("mean_error") or 0.0)),
            "max_abs_error": float(row.get("max_abs_error") or 0.0),
        })
    return layers


def _selective(converter: Any, samples: Any, denylist: list[str], limit: int,
               io_dtype: str) -> bytes:
    """Quantize everything but the named tensors' ops, which stay in float.

    The debugger's model always has float input and output; they are made ``io_dtype`` again
    where the first and last ops are quantized. Where one is kept in float, so is that end.
    """
    import tensorflow as tf
    from tensorflow.lite.python import util

    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist)
    with contextlib.redirect_stdout(io.StringIO()):
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=_debug_dataset(samples, limit),
            debug_options=options)
        data = bytes(debugger.get_nondebug_quantized_model())
    if io_dtype in ("int8", "uint8"):
        dtype = getattr(tf, io_dtype)
        for inputs, outputs in ((dtype, dtype), (dtype, tf.float32), (tf.float32, dtype)):
            try:
                return bytes(util.modify_model_io_type(data, inputs, outputs))
            except (ValueError, RuntimeError):
                continue
    return data


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}


def _optimize(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Training jobs live in ``converters.optimize``; imported only when one is asked for."""

    def run(job: dict[str, Any]) -> dict[str, Any]:
        from converters.optimize.jobs import JOBS as OPTIMIZE_JOBS

        return OPTIMIZE_JOBS[name](job)

    return run


JOBS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "inspect": job_inspect,
    "quantize": job_quantize,
    **{name: _optimize(name) for name in ("prune", "qat", "distill")},
}


def main(argv: list[str]) -> int:
    sys.stdout = sys.stderr  # the converter prints to stdout; keep it off the parent's output
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    result_path = Path(str(job_path) + ".result")
    try:
        result = JOBS[job["job"]](job)
        result["versions"] = result.get("versions") or _versions()
    except JobError as exc:
        result = {"error": str(exc)}
    except Exception as exc:
        traceback.print_exc(file=sys.stderr) if os.environ.get("EDGE_DEBUG") else None
        result = {"error": f"{type(exc).__name__}: {_one_line(exc)}"}
    result_path.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
