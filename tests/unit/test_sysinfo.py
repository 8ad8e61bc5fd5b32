"""Board and process facts, read from real /proc and from fake /sys trees."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.system import sysinfo


def make_zones(root: Path, zones: list[tuple[str, str]]) -> Path:
    for number, (kind, temp) in enumerate(zones):
        zone = root / f"thermal_zone{number}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(temp + "\n")
    return root


def test_rss_tracks_allocations() -> None:
    before = sysinfo.rss_bytes()
    block = np.ones(64 * 2**20, dtype=np.uint8)  # touched, so resident
    after = sysinfo.rss_bytes()
    assert block[-1] == 1
    assert after - before > 48 * 2**20
    assert sysinfo.peak_rss_bytes() >= after * 0.9


def test_peak_rss_is_never_below_the_current_rss() -> None:
    block = np.ones(48 * 2**20, dtype=np.uint8)  # touched: resident now
    rss, peak = sysinfo.rss_bytes(), sysinfo.peak_rss_bytes()
    assert peak >= rss >= block.nbytes


def test_peak_rss_reads_vmhwm_and_falls_back_without_proc(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 900000 kB\nVmHWM:\t  123456 kB\nVmRSS:\t 1000 kB\n")
    assert sysinfo.peak_rss_bytes(status) == 123456 * 1024
    fallback = sysinfo.peak_rss_bytes(tmp_path / "no-status")
    assert fallback > 0


def test_rss_falls_back_without_proc(tmp_path: Path) -> None:
    assert sysinfo.rss_bytes(tmp_path / "no-statm") == sysinfo.peak_rss_bytes()


@pytest.mark.parametrize(("zones", "expected"), [
    ([("cpu-thermal", "48312")], 48.3),                                       # Raspberry Pi
    ([("AO-therm", "31000"), ("GPU-therm", "40500"), ("CPU-therm", "42000")], 42.0),  # Nano
    ([("acpitz", "27800"), ("x86_pkg_temp", "55000")], 55.0),
    ([("soc0-thermal", "47000"), ("board", "30000")], 47.0),
    ([("board", "36")], 36.0),                                                # plain degrees
    ([("cpu-thermal", "garbage"), ("gpu", "-274000"), ("tj-thermal", "61500")], 61.5),
])
def test_cpu_temperature_picks_the_cpu_zone(tmp_path: Path, zones: list[tuple[str, str]],
                                            expected: float) -> None:
    assert sysinfo.cpu_temperature_c(make_zones(tmp_path, zones)) == expected


def test_cpu_temperature_absent(tmp_path: Path) -> None:
    assert sysinfo.cpu_temperature_c(tmp_path / "none") is None
    assert sysinfo.cpu_temperature_c(make_zones(tmp_path / "bad", [("cpu", "")])) is None


def test_zone_order_is_numeric(tmp_path: Path) -> None:
    zones = [(f"sensor{i}", str(20000 + i * 1000)) for i in range(12)]
    root = make_zones(tmp_path, zones)
    for number in (0, 1):  # zone10 now sorts first as text, zone2 as a number
        for f in (root / f"thermal_zone{number}").iterdir():
            f.unlink()
        (root / f"thermal_zone{number}").rmdir()
    assert sysinfo.cpu_temperature_c(root) == 22.0


def test_machine_model_from_device_tree(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    assert sysinfo.machine_model((tmp_path / "missing", model)) == "Raspberry Pi 4 Model B Rev 1.4"
    assert sysinfo.machine_model((tmp_path / "missing",)) is None


def test_memory_total(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        3884420 kB\nMemFree:  100 kB\n")
    assert sysinfo.memory_total_bytes(meminfo) == 3884420 * 1024
    assert sysinfo.memory_total_bytes(tmp_path / "missing") is None


def test_cpu_count_and_load() -> None:
    assert 1 <= sysinfo.cpu_count() <= (os.cpu_count() or 1)
    load = sysinfo.load_average()
    assert load is None or (len(load) == 3 and all(v >= 0 for v in load))


def test_summaries_are_json_ready() -> None:
    info = sysinfo.system_info()
    snap = sysinfo.process_snapshot()
    json.dumps([info, snap], allow_nan=False)
    assert info["cpus"] == sysinfo.cpu_count()
    assert isinstance(info["description"], str) and "CPUs" in info["description"]
    assert isinstance(snap["rss_bytes"], int) and isinstance(snap["peak_rss_bytes"], int)
    assert snap["peak_rss_bytes"] >= snap["rss_bytes"] > 0
