"""The conversion report: ``report.json`` for machines, ``report.html`` (self-contained, with
plots) for people: sizes, accuracy, latency, per-layer quantization error, score distributions."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .bundle_writer import BundleParts

WORST_LAYERS = 25
VERDICT_COLOURS = {"pass": "#1e8449", "fail": "#c0392b", "undecided": "#b9770e"}


def write_reports(root: Path, manifest: dict[str, Any], parts: BundleParts) -> None:
    report = build_report(manifest, parts)
    (root / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (root / "report.html").write_text(render_html(report, parts), encoding="utf-8")


def build_report(manifest: dict[str, Any], parts: BundleParts) -> dict[str, Any]:
    layers = sorted(parts.layers, key=lambda r: r["rmse_over_scale"], reverse=True)
    m = manifest["metrics"]
    return {
        "schema": "edge-report/1",
        "name": manifest["name"], "version": manifest["version"],
        "profile": manifest["profile"]["name"], "task": manifest["task"],
        "created": manifest["created"],
        "sizes": {"float_bytes": m["float_size_bytes"], "model_bytes": m["size_bytes"],
                  "gzip_bytes": m["gzip_bytes"],
                  "ratio": round(m["float_size_bytes"] / max(1, m["size_bytes"]), 3)},
        "accuracy": {k: m[k] for k in ("float_accuracy", "int8_accuracy", "agreement",
                                       "samples", "evaluated_on")},
        "latency_ms": m["host_latency_ms"],
        "gate": manifest["gate"],
        "intervals": m.get("intervals"),
        "fully_integer": m["fully_integer"],
        "float_tensors": parts.float_tensors[:50],
        "recovery": parts.recovery,
        "optimization": parts.optimization_report,
        "worst_layers": layers[:WORST_LAYERS],
        "layers": parts.layers,
        "edgetpu": manifest.get("edgetpu"),
        "calibration": manifest["calibration"],
        "versions": manifest["versions"],
        "reference_stats": manifest["reference_stats"],
    }


def _figure_png(draw: Any, size: tuple[float, float] = (6.4, 3.2)) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _layers_plot(layers: list[dict[str, Any]]) -> str | None:
    worst = layers[:WORST_LAYERS]
    if not worst:
        return None

    def draw(ax: Any) -> None:
        labels = [f"{r['op_name']} #{r['tensor_idx']}" for r in worst][::-1]
        values = [r["rmse_over_scale"] for r in worst][::-1]
        colors = ["#c0392b" if v > 0.7 else "#2e86c1" for v in values]
        ax.barh(labels, values, color=colors)
        ax.axvline(0.7, color="#888", linestyle="--", linewidth=1)
        ax.set_xlabel("RMSE / scale (quantization error in steps; > 0.7 is suspect)")
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title("Per-layer quantization error (worst first)")

    return _figure_png(draw, (6.4, max(2.4, 0.22 * len(worst) + 1)))


def _scores_plot(parts: BundleParts) -> str:
    f, q = parts.float_run.outputs, parts.quant_run.outputs

    def draw(ax: Any) -> None:
        if parts.task == "classification" and f.shape[1] > 1:
            fv, qv = _top_scores(f, parts), _top_scores(q, parts)
            ax.set_xlabel("top-1 score")
        else:
            fv, qv = f.reshape(-1), q.reshape(-1)
            ax.set_xlabel("output value")
        bins = np.linspace(min(fv.min(), qv.min()), max(fv.max(), qv.max()) + 1e-6, 30)
        ax.hist(fv, bins=bins, alpha=0.6, label="float32", color="#7f8c8d")
        ax.hist(qv, bins=bins, alpha=0.6, label=parts.profile.quantization, color="#2e86c1")
        ax.set_ylabel("samples")
        ax.legend()
        ax.set_title("Score distribution, float vs quantized")

    return _figure_png(draw)


def _top_scores(outputs: np.ndarray, parts: BundleParts) -> np.ndarray:
    if parts.postprocess.get("softmax"):
        e = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        outputs = e / e.sum(axis=1, keepdims=True)
    return outputs.max(axis=1)


def _bars_plot(report: dict[str, Any], parts: BundleParts) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(6.4, 2.6), dpi=100)
    try:
        kinds = ["float32", parts.profile.quantization]
        sizes = [report["sizes"]["float_bytes"] / 1024, report["sizes"]["model_bytes"] / 1024]
        a.bar(kinds, sizes, color=["#7f8c8d", "#2e86c1"])
        a.set_title("Size (KiB)")
        lat = [report["latency_ms"]["float"], report["latency_ms"]["int8"]]
        b.bar(kinds, lat, color=["#7f8c8d", "#2e86c1"])
        b.set_title("Host latency, median (ms)")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(report: dict[str, Any], parts: BundleParts) -> str:
    esc = html.escape
    acc = report["accuracy"]
    gate = report["gate"]
    status = gate.get("status") or ("pass" if gate["passed"] else "fail")
    verdict = {"pass": "passed", "fail": "FAILED", "undecided": "UNDECIDED"}[status]
    rows = [
        ("Profile", report["profile"]), ("Task", report["task"]),
        ("Float accuracy", _pct(acc["float_accuracy"])),
        ("Quantized accuracy", _pct(acc["int8_accuracy"])),
        ("Top-1 agreement", _pct(acc["agreement"])),
        ("Evaluated on", f"{acc['samples']} {acc['evaluated_on']} samples"),
        ("Accuracy gate", gate.get("text") or
         f"{verdict}: drop {gate['accuracy_drop']:.2f} points "
         f"(limit {gate['max_accuracy_drop']}, by {gate['basis']})"),
        ("Size", f"{report['sizes']['float_bytes']:,} B → {report['sizes']['model_bytes']:,} B "
                 f"(×{report['sizes']['ratio']:.2f} smaller)"),
        ("Host latency (median)", f"float {report['latency_ms']['float']:.3f} ms, quantized "
                                  f"{report['latency_ms']['int8']:.3f} ms (this host, not the board)"),
        ("Fully integer", "yes" if report["fully_integer"] else
         f"no ({len(parts.float_tensors)} float tensors)"),
        ("Calibration", f"{report['calibration']['samples']} samples from "
                        f"{report['calibration']['source']}"),
    ]
    rows.append(("Gzipped size", f"{report['sizes']['gzip_bytes']:,} B"))
    if report.get("recovery"):
        rows.append(("Recovery", report["recovery"]["summary"]))
    rows += [(f"95% interval: {name}", _interval(figure))
             for name, figure in (report.get("intervals") or {}).items()]
    rows += optimization_rows(manifest_optimization(parts), report.get("optimization"))
    if report.get("edgetpu"):
        rows.append(("Edge TPU", report["edgetpu"]["message"]))
    table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in rows)
    images = [_bars_plot(report, parts), _scores_plot(parts)]
    layer_png = _layers_plot(report["worst_layers"])
    if layer_png:
        images.append(layer_png)
    figs = "".join(f'<img alt="plot" src="data:image/png;base64,{png}">' for png in images)
    layer_rows = "".join(
        f"<tr><td>{esc(r['op_name'])}</td><td>{esc(r['tensor_name'][:80])}</td>"
        f"<td>{r['rmse_over_scale']:.3f}</td><td>{r['scale']:.4g}</td></tr>"
        for r in report["worst_layers"][:10])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{esc(report['name'])} — {esc(report['profile'])} conversion report</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ text-align: left; padding: .25em .8em; border-bottom: 1px solid #ddd; }}
.verdict {{ font-weight: bold; color: {VERDICT_COLOURS[status]}; }}
img {{ max-width: 100%; display: block; margin: 1em 0; }}
</style></head><body>
<h1>{esc(report['name'])} v{esc(report['version'])} for {esc(report['profile'])}</h1>
<p class="verdict">Accuracy gate {verdict}</p>
<table>{table}</table>
{figs}
<h2>Worst layers</h2>
<table><tr><th>op</th><th>tensor</th><th>RMSE/scale</th><th>scale</th></tr>{layer_rows}</table>
<p>Generated {esc(report['created'])} by edge-convert {esc(str(report['versions'].get('converter')))}.</p>
</body></html>
"""


def manifest_optimization(parts: BundleParts) -> dict[str, Any]:
    return parts.optimization or {"pruning": None, "qat": False, "distilled_from": None}


def optimization_rows(record: dict[str, Any], details: dict[str, Any] | None,
                      ) -> list[tuple[str, str]]:
    """What each optimization did, in words a person reads at a glance."""
    rows: list[tuple[str, str]] = []
    details = details or {}
    pruning = details.get("pruning")
    if record.get("pruning") and pruning:
        worst = ", ".join(f"{layer['layer']} {layer['sparsity']:.0%}"
                          for layer in pruning["layers"][:8])
        rows.append(("Pruning", f"target {record['pruning']['target']:.0%}, achieved "
                                f"{pruning['achieved']:.1%} over {len(pruning['layers'])} layers "
                                f"({worst}); float accuracy {_pct(pruning.get('accuracy_before'))}"
                                f" → {_pct(pruning.get('accuracy_after'))} after "
                                f"{pruning['epochs']} epoch(s) of fine-tuning"))
    qat = details.get("qat")
    if record.get("qat") and qat:
        rows.append(("Quantization-aware training",
                     f"{qat['epochs']} epoch(s); float accuracy "
                     f"{_pct(qat.get('accuracy_before'))}, with quantization in the loop "
                     f"{_pct(qat.get('accuracy_after'))}; converted fully integer"))
    distilled = record.get("distilled_from")
    if distilled:
        rows.append(("Distilled from", f"a teacher at {_pct(distilled.get('accuracy'))} "
                                       f"(sha256 {str(distilled.get('sha256'))[:12]}…), "
                                       f"T={distilled.get('temperature')}, "
                                       f"alpha={distilled.get('alpha')}"))
    rows += [("Against plain int8", line) for line in details.get("summary", [])]
    return rows


def _interval(figure: dict[str, Any]) -> str:
    if "value" not in figure or "ci95" not in figure:
        return str(figure)
    low, high = figure["ci95"]
    return f"{figure['value']:.4g} (95% CI {low:.4g} to {high:.4g}, n={figure['n']})"


def _pct(v: float | None) -> str:
    return "n/a (no labels)" if v is None else f"{v * 100:.2f}%"
