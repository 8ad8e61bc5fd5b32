"""``edge-convert distill``: a smaller student learns from the teacher (SPEC §8).

The data are loaded, checked and preprocessed exactly as for a conversion; the training runs in
the child process; the student file records where it came from, and ``convert`` carries that
into the bundle's manifest.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConvertError
from ..jobs import run_job
from ..options import ConvertOptions, Log
from ..prepare import Prepared, check_model_file, prepare, read_label_file
from .provenance import write_provenance
from .trainset import check_labelled, evaluation_arrays, training_arrays

DEFAULT_EPOCHS = 15


@dataclass
class DistillOptions:
    teacher: Path
    train: Path
    validation: Path
    out: Path
    student: Path | None = None
    width: float | None = None
    labels: Path | None = None
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    color: str | None = None
    temperature: float = 2.0
    alpha: float = 0.5
    epochs: int = DEFAULT_EPOCHS


def check(opts: DistillOptions) -> None:
    if (opts.student is None) == (opts.width is None):
        raise ConvertError("give either --student FILE or --student-width F")
    if opts.width is not None and not 0.0 < opts.width < 1.0:
        raise ConvertError(f"--student-width {opts.width:g}: the width factor must be between "
                           "0 and 1 (e.g. 0.5)")
    if opts.temperature <= 0:
        raise ConvertError("--temperature must be above 0")
    if not 0.0 <= opts.alpha <= 1.0:
        raise ConvertError("--alpha must be between 0 and 1")
    if opts.epochs < 1:
        raise ConvertError("--epochs must be at least 1")
    if opts.out.suffix != ".keras":
        raise ConvertError(f"--out {opts.out}: the student is written as a .keras file")
    if opts.student is not None:
        check_model_file(opts.student)
    check_labelled(opts.train)


def distill(opts: DistillOptions, log: Log = print) -> dict[str, Any]:
    check(opts)
    labels = read_label_file(opts.labels)
    base = ConvertOptions(model=opts.teacher, profiles=[], calibration=opts.train,
                          out=opts.out.parent, validation=opts.validation, labels=opts.labels,
                          input_mean=opts.input_mean, input_std=opts.input_std,
                          color=opts.color, train=opts.train)
    with tempfile.TemporaryDirectory(prefix="edge-distill-") as tmp:
        prep = prepare(base, labels, Path(tmp), log)
        return distill_prepared(opts, base, prep, log)


def distill_prepared(opts: DistillOptions, base: ConvertOptions, prep: Prepared,
                     log: Log) -> dict[str, Any]:
    """Distil with data a conversion (or a sweep) already prepared."""
    check(opts)
    evaluation = evaluation_arrays(prep)
    if evaluation is None:
        raise ConvertError("distillation needs labelled --validation data")
    what = f"{opts.student.name}" if opts.student else f"the teacher at width {opts.width:g}"
    log(f"distilling {opts.teacher.name} into {what} (T={opts.temperature:g}, "
        f"alpha={opts.alpha:g}, {opts.epochs} epochs), and training it on labels alone …")
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    partial = opts.out.with_name(f".{opts.out.name}.partial.keras")
    try:
        result = run_job({
            "job": "distill", "teacher": str(opts.teacher.resolve()),
            "student": str(opts.student.resolve()) if opts.student else None,
            "width": opts.width, "train": str(training_arrays(base, prep, log)),
            "validation": str(evaluation), "temperature": opts.temperature,
            "alpha": opts.alpha, "epochs": opts.epochs, "from_logits": prep.softmax,
            "out": str(partial)}, prep.work, "distill")
        record = {
            "teacher": {"file": opts.teacher.name, "sha256": _sha256(opts.teacher),
                        **result["teacher"]},
            "student": {**result["student"], "width": opts.width,
                        "file": opts.student.name if opts.student else None},
            "label_only": result["label_only"],
            "inherited_label_only": result.get("inherited_label_only"),
            "temperature": opts.temperature,
            "alpha": opts.alpha, "epochs": result["epochs"],
            "train": {"source": str(opts.train), "samples": None},
            "evaluated_on": f"{len(prep.evaluation)} {prep.eval_basis} samples",
        }
        write_provenance(partial, record)
        partial.replace(opts.out)
    finally:
        partial.unlink(missing_ok=True)
    return record


def distill_table(record: dict[str, Any]) -> str:
    teacher, student = record["teacher"], record["student"]
    rows = [("", "accuracy", "parameters", "size"),
            ("teacher", _pct(teacher["accuracy"]), f"{teacher['params']:,}",
             _kb(teacher["size_bytes"])),
            ("student (distilled)", _pct(student["accuracy"]), f"{student['params']:,}",
             _kb(student["size_bytes"])),
            ("student (labels only)", _pct(record["label_only"]["accuracy"]),
             f"{student['params']:,}", _kb(student["size_bytes"]))]
    if record.get("inherited_label_only"):
        rows.append(("student (teacher's filters, labels only)",
                     _pct(record["inherited_label_only"]["accuracy"]), f"{student['params']:,}",
                     _kb(student["size_bytes"])))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    gained = (student["accuracy"] - record["label_only"]["accuracy"]) * 100
    lines.append(f"the student has {student['params'] / max(1, teacher['params']):.2f} × the "
                 f"teacher's parameters; distilling changed its accuracy by {gained:+.1f} points "
                 f"against labels alone ({record['evaluated_on']})")
    start = student.get("start") or "given"
    if start == "teacher":
        lines.append("the distilled student started from the teacher's strongest filters; the "
                     "labels-only student from random weights")
    elif start.startswith("random"):
        lines.append(f"the student started from random weights: {start[len('random ('):-1]}")
    return "\n".join(lines)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    if path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(item.read_bytes())
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f}%"


def _kb(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 10 * 2**20 else f"{n / 2**20:.1f} MiB"
