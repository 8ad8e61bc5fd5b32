"""Edge TPU pre-flight: will this int8 model map to the Edge TPU, and where does it fall back?

The Edge TPU compiler maps ops in execution order up to the first one it cannot run (an op not in
its list, or one working on tensors that are not 8-bit); that op and everything after it run on
the host CPU. The compiler itself only exists for x86-64 Debian/Ubuntu, so this check reads the
graph with the LiteRT interpreter and predicts the split anywhere, before any compile.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import ConvertError

# The "Supported operations" table of the Coral documentation (compiler 16, runtime 14), as TFLite
# builtin op names. DEQUANTIZE is not in it: compiler logs show it left on the CPU ("Operation is
# working on an unsupported data type"), which is where a float output belongs anyway.
EDGETPU_OPS: frozenset[str] = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "UNIDIRECTIONAL_SEQUENCE_LSTM", "MAXIMUM",
    "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX",
    "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE",
    "STRIDED_SLICE", "SUB", "SUM", "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})
EIGHT_BIT = frozenset({"int8", "uint8"})
COMPILER = "edgetpu_compiler"
COMPILE_TIMEOUT_S = 600.0
MAX_PROBLEM_LINES = 10


@dataclass(frozen=True, slots=True)
class OpInfo:
    """One op of the model's main graph, in execution order."""

    index: int
    op_name: str
    input_dtypes: tuple[str, ...]
    output_dtypes: tuple[str, ...]
    # int32 is fine for constants (biases, shapes, axes) but not for activations
    constant_inputs: tuple[bool, ...] = ()

    def off_type_dtypes(self) -> list[str]:
        """dtypes this op touches that the Edge TPU cannot compute on."""
        found: list[str] = []
        constants = self.constant_inputs or (False,) * len(self.input_dtypes)
        for dtype, constant in zip(self.input_dtypes, constants, strict=True):
            if dtype not in EIGHT_BIT and not (constant and dtype == "int32"):
                found.append(dtype)
        found.extend(d for d in self.output_dtypes if d not in EIGHT_BIT)
        return list(dict.fromkeys(found))

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "op": self.op_name, "inputs": list(self.input_dtypes),
                "outputs": list(self.output_dtypes)}


@dataclass(slots=True)
class EdgeTpuReport:
    """What the Edge TPU compiler will map, and why the rest falls back to the CPU."""

    ops: list[OpInfo]
    unsupported: list[OpInfo]
    first_cpu_index: int | None
    non_int8: list[OpInfo]
    dynamic_shapes: bool
    batch_one: bool = True
    input_shapes: list[list[int]] = field(default_factory=list)

    @property
    def tpu_ops(self) -> int:
        first = self.first_cpu_index
        return len(self.ops) if first is None else sum(op.index < first for op in self.ops)

    @property
    def cpu_ops(self) -> int:
        return len(self.ops) - self.tpu_ops

    @property
    def ok(self) -> bool:
        """Every op maps and the model has the fixed, batch-1 shapes the Edge TPU needs."""
        return self.first_cpu_index is None and not self.dynamic_shapes and self.batch_one

    def summary(self) -> str:
        """Readable lines, first the verdict, then one line per problem."""
        lines = [self._verdict()]
        unsupported = {op.index for op in self.unsupported}
        problems = sorted({*self.unsupported, *self.non_int8}, key=lambda o: o.index)
        for op in problems[:MAX_PROBLEM_LINES]:
            lines.append(_problem_line(op, op.index in unsupported))
        if len(problems) > MAX_PROBLEM_LINES:
            lines.append(f"... and {len(problems) - MAX_PROBLEM_LINES} more ops like these")
        if self.dynamic_shapes:
            lines.append("dynamic shapes (a -1 dimension): the Edge TPU needs fixed shapes; "
                         "convert with a fixed input shape")
        if not self.batch_one:
            lines.append(f"input batch is not 1 ({self.input_shapes}): the Edge TPU runs batch 1")
        return "\n".join(lines)

    def _verdict(self) -> str:
        count = f"{len(self.ops)} ops"
        if self.first_cpu_index is None and self.ok:
            return f"{count}; all map to the Edge TPU"
        if self.first_cpu_index is None:
            return f"{count}; all are Edge TPU ops, but the shapes below must be fixed first"
        op = next(op for op in self.ops if op.index == self.first_cpu_index)
        maps = "maps" if self.tpu_ops == 1 else "map"
        return (f"{count}; {self.tpu_ops} {maps} to the Edge TPU; the graph falls back to the CPU "
                f"from op {op.index} {op.op_name} on: {self.cpu_ops} ops")

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "ops": len(self.ops),
            "tpu_ops": self.tpu_ops,
            "cpu_ops": self.cpu_ops,
            "first_cpu_index": self.first_cpu_index,
            "unsupported": [op.to_dict() for op in self.unsupported],
            "non_int8": [op.to_dict() for op in self.non_int8],
            "dynamic_shapes": self.dynamic_shapes,
            "batch_one": self.batch_one,
            "input_shapes": self.input_shapes,
            "op_names": [op.op_name for op in self.ops],
        }


def _problem_line(op: OpInfo, unsupported: bool) -> str:
    reasons = []
    if unsupported:
        reasons.append("not in the Edge TPU op list")
    off_type = op.off_type_dtypes()
    if off_type:
        reasons.append(f"works on {'/'.join(off_type)} tensors (the Edge TPU needs 8-bit integers)")
    return f"op {op.index} {op.op_name}: {'; '.join(reasons)}"


@dataclass(frozen=True, slots=True)
class ModelGraph:
    """What the pre-flight needs from a model: its ops and its input shape signatures."""

    ops: list[OpInfo]
    dynamic_shapes: bool
    input_shapes: list[list[int]]


def model_ops(model_path: Path) -> list[OpInfo]:
    """The ops of a ``.tflite`` model's main graph, in execution order, with tensor dtypes."""
    return _read_graph(model_path).ops


def preflight(model_path: Path, allowed_ops: Iterable[str] | None = None) -> EdgeTpuReport:
    """Predict the Edge TPU compiler's split of ``model_path`` (default op list: EDGETPU_OPS)."""
    return assess(_read_graph(model_path), allowed_ops)


def assess(graph: ModelGraph, allowed_ops: Iterable[str] | None = None) -> EdgeTpuReport:
    """The report for an already-read graph (pure; see :func:`preflight`)."""
    allowed = EDGETPU_OPS if allowed_ops is None else frozenset(op.upper() for op in allowed_ops)
    unsupported = [op for op in graph.ops if op.op_name not in allowed]
    non_int8 = [op for op in graph.ops if op.off_type_dtypes()]
    blocked = {op.index for op in unsupported} | {op.index for op in non_int8}
    first = min(blocked, default=None)
    return EdgeTpuReport(
        ops=graph.ops, unsupported=unsupported, first_cpu_index=first, non_int8=non_int8,
        dynamic_shapes=graph.dynamic_shapes,
        batch_one=all(shape[:1] == [1] for shape in graph.input_shapes),
        input_shapes=graph.input_shapes,
    )


def _read_graph(model_path: Path) -> ModelGraph:
    interpreter = _load_interpreter(model_path)
    tensors = {int(t["index"]): t for t in interpreter.get_tensor_details()}
    raw_ops = interpreter._get_ops_details()
    produced = {int(i) for op in raw_ops for i in op["outputs"]}
    inputs = [int(d["index"]) for d in interpreter.get_input_details()]
    # a tensor nobody produces and that is not a graph input holds constant data
    constant = {i for i in tensors if i not in produced and i not in inputs}
    ops = [_op_info(op, tensors, constant) for op in raw_ops]
    return ModelGraph(
        ops=ops,
        dynamic_shapes=any(-1 in _signature(t) for t in tensors.values()),
        input_shapes=[_signature(tensors[i]) for i in inputs],
    )


def _op_info(raw: dict[str, Any], tensors: dict[int, dict[str, Any]], constant: set[int],
             ) -> OpInfo:
    ins = [int(i) for i in raw["inputs"] if int(i) >= 0]  # -1 marks an absent optional input
    outs = [int(i) for i in raw["outputs"] if int(i) >= 0]
    return OpInfo(
        index=int(raw["index"]),
        op_name=str(raw["op_name"]),
        input_dtypes=tuple(_dtype_name(tensors[i]) for i in ins),
        output_dtypes=tuple(_dtype_name(tensors[i]) for i in outs),
        constant_inputs=tuple(i in constant for i in ins),
    )


def _dtype_name(tensor: dict[str, Any]) -> str:
    return np.dtype(tensor["dtype"]).name


def _signature(tensor: dict[str, Any]) -> list[int]:
    signature = tensor.get("shape_signature")
    shape = signature if signature is not None and len(signature) else tensor["shape"]
    return [int(v) for v in shape]


def _load_interpreter(model_path: Path) -> Any:
    if not model_path.is_file():
        raise ConvertError(f"model not found: {model_path}")
    interpreter_class = _interpreter_class()
    try:
        return interpreter_class(model_path=str(model_path))
    except (ValueError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvertError(f"cannot read {model_path} as a TFLite model: {first_line}") from None


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise ConvertError(
                "no TFLite runtime: install ai-edge-litert to inspect models") from None
    return Interpreter


# --- the real compiler, where it is installed ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompileResult:
    """The outcome of running ``edgetpu_compiler`` (``ran`` is False when it is not installed)."""

    ran: bool
    ok: bool
    log: str
    output: Path | None
    message: str


def compile_for_edgetpu(model_path: Path, out_dir: Path) -> CompileResult:
    """Run ``edgetpu_compiler -s -o OUT_DIR MODEL`` when it is on PATH; keep its log."""
    compiler = shutil.which(COMPILER)
    if compiler is None:
        return CompileResult(
            ran=False, ok=False, log="", output=None,
            message=(f"{COMPILER} is not installed here (it exists only for x86-64 Debian/Ubuntu): "
                     f"{model_path.name} is a full-int8 model ready for it; compile it where the "
                     f"compiler is installed with `{COMPILER} -s {model_path.name}`"),
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    return _run_compiler([compiler, "-s", "-o", str(out_dir), str(model_path)],
                         out_dir / f"{model_path.stem}_edgetpu.tflite")


def _run_compiler(command: Sequence[str], expected: Path) -> CompileResult:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return CompileResult(True, False, "", None,
                             f"{COMPILER} did not finish within {COMPILE_TIMEOUT_S:g} s")
    except OSError as exc:
        return CompileResult(True, False, "", None, f"{COMPILER} could not be started: {exc}")
    log = done.stdout + done.stderr
    if done.returncode != 0 or not expected.is_file():
        last = log.strip().splitlines()[-1] if log.strip() else f"exit code {done.returncode}"
        return CompileResult(True, False, log, None, f"{COMPILER} failed: {last}")
    return CompileResult(True, True, log, expected, _compiled_message(log, expected))


def _compiled_message(log: str, output: Path) -> str:
    counts: dict[str, str] = {}
    for line in log.splitlines():
        for where in ("Edge TPU", "CPU"):
            prefix = f"Number of operations that will run on {where}:"
            if line.startswith(prefix):
                counts[where] = line.removeprefix(prefix).strip()
    if not counts:
        return f"compiled {output.name}"
    tpu, cpu = counts.get("Edge TPU", "?"), counts.get("CPU", "0")
    return f"compiled {output.name} ({tpu} ops on the Edge TPU, {cpu} on the CPU)"
