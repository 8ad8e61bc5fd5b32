"""What the board is and how the process is doing: memory, temperature, cores, load.

Every reader is cheap (a few small files under /proc and /sys) and returns ``None`` instead of
raising when the board does not expose a value.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import sys
from pathlib import Path

STATM = Path("/proc/self/statm")
STATUS = Path("/proc/self/status")
MEMINFO = Path("/proc/meminfo")
THERMAL_ROOT = Path("/sys/class/thermal")
MODEL_FILES = (
    Path("/proc/device-tree/model"),
    Path("/sys/firmware/devicetree/base/model"),
    Path("/sys/devices/virtual/dmi/id/product_name"),
)
# Zone types naming the CPU on a Pi ("cpu-thermal"), a Jetson ("CPU-therm", "cpu-thermal")
# or a PC ("x86_pkg_temp"); SoC-wide zones come next.
_CPU_ZONE = re.compile(r"cpu|x86_pkg", re.IGNORECASE)
_SOC_ZONE = re.compile(r"soc|tj|acpitz", re.IGNORECASE)
_PLAUSIBLE_C = (-40.0, 150.0)


def rss_bytes(statm: Path = STATM) -> int:
    """Resident memory of this process now (peak RSS where /proc is missing)."""
    try:
        resident_pages = int(statm.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_bytes()
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes(status: Path = STATUS) -> int:
    """Highest resident memory this process has reached: ``VmHWM``, which counts the current
    RSS too. ``ru_maxrss`` (where /proc is missing) can lag behind the current RSS."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def cpu_temperature_c(thermal_root: Path = THERMAL_ROOT) -> float | None:
    """CPU temperature in °C from the kernel's thermal zones, or None when there is none."""
    zones = _read_zones(thermal_root)
    for pattern in (_CPU_ZONE, _SOC_ZONE):
        for kind, celsius in zones:
            if pattern.search(kind):
                return celsius
    return zones[0][1] if zones else None


def _read_zones(thermal_root: Path) -> list[tuple[str, float]]:
    try:
        dirs = sorted(thermal_root.glob("thermal_zone*"), key=_zone_number)
    except OSError:
        return []
    zones = []
    for zone in dirs:
        celsius = _zone_celsius(zone / "temp")
        if celsius is not None:
            zones.append((_read_text(zone / "type") or "", celsius))
    return zones


def _zone_number(path: Path) -> int:
    digits = path.name.removeprefix("thermal_zone")
    return int(digits) if digits.isdigit() else sys.maxsize


def _zone_celsius(path: Path) -> float | None:
    text = _read_text(path)
    try:
        raw = float(text) if text else None
    except ValueError:
        return None
    if raw is None:
        return None
    # The kernel reports millidegrees; a few drivers report plain degrees.
    celsius = raw / 1000.0 if abs(raw) >= 200 else raw
    low, high = _PLAUSIBLE_C
    return round(celsius, 1) if low <= celsius <= high else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip("\x00 \n\t")
    except OSError:
        return None


def cpu_count() -> int:
    """CPUs this process may run on (respects taskset / cpuset limits)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return None
    return round(one, 2), round(five, 2), round(fifteen, 2)


def memory_total_bytes(meminfo: Path = MEMINFO) -> int | None:
    """Physical memory of the board, or None when unknown."""
    text = _read_text(meminfo) or ""
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def machine_model(candidates: tuple[Path, ...] = MODEL_FILES) -> str | None:
    """The board's own name, e.g. "Raspberry Pi 4 Model B Rev 1.4", when it publishes one."""
    for path in candidates:
        text = _read_text(path)
        if text:
            return text
    return None


def machine_description() -> str:
    """One line for logs and ``info``: model, architecture, cores and memory."""
    model = machine_model() or platform.system() or "unknown machine"
    parts = [platform.machine() or "unknown arch", f"{cpu_count()} CPUs"]
    total = memory_total_bytes()
    if total:
        parts.append(f"{total / 2**30:.1f} GiB")
    return f"{model} ({', '.join(parts)})"


def system_info() -> dict[str, object]:
    """Static facts about the board, JSON-ready."""
    return {
        "model": machine_model(),
        "description": machine_description(),
        "arch": platform.machine(),
        "system": platform.system(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": cpu_count(),
        "memory_total_bytes": memory_total_bytes(),
    }


def process_snapshot() -> dict[str, object]:
    """How this process and board are doing now, JSON-ready (for the metrics topic)."""
    load = load_average()
    rss = rss_bytes()
    return {
        "rss_bytes": rss,
        "peak_rss_bytes": max(rss, peak_rss_bytes()),
        "cpu_temp_c": cpu_temperature_c(),
        "load_1m": load[0] if load else None,
    }
