"""``sweep.json`` and ``sweep.html``: one row per variant, accuracy against size and against
host latency with the Pareto fronts marked, and the recommendation."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any


def _front(rows: list[dict[str, Any]], cost: str) -> set[str]:
    """Variants no other variant beats on both ``cost`` (lower) and accuracy (higher)."""
    points = [r for r in rows if r.get("accuracy") is not None and r.get(cost) is not None]
    front = set()
    for r in points:
        dominated = any(o is not r and o[cost] <= r[cost] and o["accuracy"] >= r["accuracy"]
                        and (o[cost] < r[cost] or o["accuracy"] > r["accuracy"])
                        for o in points)
        if not dominated:
            front.add(r["variant"])
    return front


def mark_fronts(rows: list[dict[str, Any]]) -> None:
    by_size, by_latency = _front(rows, "gzip_bytes"), _front(rows, "host_latency_ms")
    for row in rows:
        row["pareto_size"] = row["variant"] in by_size
        row["pareto_latency"] = row["variant"] in by_latency


def recommend(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The smallest variant that passes the gate: gzipped size (what a packed bundle and an
    over-the-air update carry), then raw size, then accuracy."""
    passing = [r for r in rows if r.get("gate_passed") and r.get("gzip_bytes") is not None]
    if not passing:
        return None
    best = min(passing, key=lambda r: (r["gzip_bytes"], r["size_bytes"], -(r["accuracy"] or 0)))
    return {"variant": best["variant"], "bundle": best["bundle"],
            "reason": "smallest gzipped model among the variants that pass the accuracy gate"}


COLUMNS = (("variant", "variant"), ("gate", "gate"), ("accuracy", "int8 acc"),
           ("agreement", "agree"), ("size_bytes", "size"), ("gzip_bytes", "gzip"),
           ("host_latency_ms", "latency"), ("params", "params"), ("nonzero_params", "non-zero"),
           ("front", "Pareto"))


def _cells(row: dict[str, Any]) -> list[str]:
    if row.get("error"):
        return [row["variant"], "error", row["error"][:60], "", "", "", "", "", "", ""]
    front = "/".join(k for k, f in (("size", "pareto_size"), ("latency", "pareto_latency"))
                     if row.get(f))
    return [row["variant"], _gate(row), _pct(row["accuracy"]),
            _pct(row["agreement"]), _kib(row["size_bytes"]), _kib(row["gzip_bytes"]),
            f"{row['host_latency_ms']:.3f} ms", _count(row.get("params")),
            _count(row.get("nonzero_params")), front or "-"]


def _gate(row: dict[str, Any]) -> str:
    status = row.get("gate") or ("pass" if row["gate_passed"] else "fail")
    return "FAIL" if status == "fail" else str(status)


def sweep_table(result: dict[str, Any]) -> str:
    rows = [[title for _, title in COLUMNS]] + [_cells(r) for r in result["variants"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    best = result.get("recommended")
    lines.append(f"float accuracy {_pct(result['float_accuracy'])} on {result['evaluated_on']}; "
                 f"gate: at most {result['max_accuracy_drop']} points below it, judged on the "
                 "95% interval; an undecided variant is not passing (more samples would decide)")
    lines.append(f"recommended: {best['variant']} ({best['bundle']})" if best else
                 "recommended: none — no variant passed the gate")
    return "\n".join(lines)


def markdown_table(result: dict[str, Any]) -> str:
    rows = [[title for _, title in COLUMNS]] + [_cells(r) for r in result["variants"]]
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def plot_png(result: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in result["variants"] if r.get("accuracy") is not None]
    best = (result.get("recommended") or {}).get("variant")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    try:
        for ax, cost, flag, label in (
                (axes[0], "gzip_bytes", "pareto_size", "gzipped size (KiB)"),
                (axes[1], "host_latency_ms", "pareto_latency", "host latency, median (ms)")):
            scale = 1024.0 if cost == "gzip_bytes" else 1.0
            for r in rows:
                x, y = r[cost] / scale, r["accuracy"] * 100
                ax.scatter([x], [y], s=80 if r["variant"] == best else 40,
                           marker="*" if r["variant"] == best else "o",
                           facecolors=("#2e86c1" if r[flag] else "#aab7b8")
                           if r["gate_passed"] else "none",
                           edgecolors="#c0392b" if not r["gate_passed"] else "#1b4f72")
                ax.annotate(r["variant"], (x, y), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
            front = sorted((r for r in rows if r[flag]), key=lambda r: r[cost])
            ax.plot([r[cost] / scale for r in front], [r["accuracy"] * 100 for r in front],
                    color="#2e86c1", linewidth=1, label="Pareto front")
            floor = (result["float_accuracy"] or 0) * 100 - result["max_accuracy_drop"]
            ax.axhline(floor, color="#c0392b", linestyle="--", linewidth=1, label="gate")
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.set_xlabel(label)
            ax.set_ylabel("int8 accuracy (%)")
            ax.legend(fontsize=7, loc="lower right")
        fig.suptitle(f"{Path(result['model']).name} on {result['profile']}: "
                     "filled = passes the gate, star = recommended", fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def write_sweep(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    png = plot_png(result)
    (out / "sweep.png").write_bytes(png)
    esc = html.escape
    head = "".join(f"<th>{esc(t)}</th>" for _, t in COLUMNS)
    body = "".join(
        "<tr" + (' class="best"' if r["variant"] == (result.get("recommended") or {}).get(
            "variant") else "") + ">" + "".join(f"<td>{esc(c)}</td>" for c in _cells(r)) + "</tr>"
        for r in result["variants"])
    best = result.get("recommended")
    verdict = (f"Recommended: <b>{esc(best['variant'])}</b> — {esc(best['reason'])} "
               f"(<code>{esc(best['bundle'])}</code>)" if best else
               "No variant passed the accuracy gate.")
    (out / "sweep.html").write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Optimization sweep — {esc(result['profile'])}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 64em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ text-align: left; padding: .25em .7em; border-bottom: 1px solid #ddd; }}
tr.best {{ background: #eaf2f8; font-weight: bold; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Optimization sweep: {esc(Path(result['model']).name)} on {esc(result['profile'])}</h1>
<p>{verdict}</p>
<p>Float accuracy {_pct(result['float_accuracy'])} on {esc(result['evaluated_on'])}; every variant
is gated at most {result['max_accuracy_drop']} points below it. Sizes are the int8 model, raw and
gzipped (sparse weights shrink only under compression); latencies are medians on this host, not
the board, and XNNPACK runs sparse int8 weights no faster than dense ones.</p>
<table><tr>{head}</tr>{body}</table>
<img alt="accuracy against size and latency" src="data:image/png;base64,{base64.b64encode(png).decode()}">
</body></html>
""", encoding="utf-8")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f}%"


def _kib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1024:.1f} KiB"


def _count(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"
