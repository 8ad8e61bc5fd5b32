"""The one-screen summary printed at the end of ``edge-convert convert``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .convert import ProfileResult


def summary_table(results: Sequence[ProfileResult]) -> str:
    header = ("profile", "size float→quant", "acc float", "acc quant", "agree", "lat float",
              "lat quant", "gate", "bundle")
    rows = [header]
    for r in results:
        m = r.manifest["metrics"]
        lat = m["host_latency_ms"]
        det = m.get("detection") or {}
        mark = " mAP" if det.get("map50_float") is not None else ""
        rows.append((
            r.profile,
            f"{_kb(m['float_size_bytes'])}→{_kb(m['size_bytes'])}",
            _pct(det.get("map50_float", m["float_accuracy"])) + mark,
            _pct(det.get("map50_int8", m["int8_accuracy"])) + mark,
            _pct(m["agreement"]) + (" boxes" if det else ""),
            f"{lat['float']:.2f} ms", f"{lat['int8']:.2f} ms",
            {"fail": "FAIL"}.get(r.gate_status, r.gate_status), str(r.bundle),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        lines += [f"note [{r.profile}]: {n}" for n in r.notes]
    lines.append("latencies are medians on this host; int8 gains show on ARM boards, not here")
    return "\n".join(lines)


def _kb(n: int) -> str:
    return f"{n / 1024:.0f}K" if n < 10 * 2**20 else f"{n / 2**20:.1f}M"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f}%"
