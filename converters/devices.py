"""What each device said to a deploy, and the table ``edge-convert deploy`` prints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DeviceResult:
    device: str
    ok: bool | None = None
    error: str | None = None
    old_version: str | None = None
    new_version: str | None = None
    seconds: float | None = None
    reply: dict[str, Any] = field(default_factory=dict)
    role: str = ""   # "canary" in a canary rollout


def results_table(results: Sequence[DeviceResult]) -> str:
    rows = [("device", "version", "result", "time")]
    for r in results:
        versions = f"{r.old_version or '?'} → {r.new_version or '?'}" if r.ok else "-"
        device = f"{r.device} ({r.role})" if r.role else r.device
        rows.append((device, versions, "ok" if r.ok else f"FAILED: {r.error}",
                     f"{r.seconds:.2f} s" if r.seconds is not None else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ok = sum(1 for r in results if r.ok)
    lines.append(f"{ok}/{len(results)} device(s) updated")
    return "\n".join(lines)
