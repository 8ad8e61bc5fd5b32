from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_runtime.system.service import main, render_unit

HARDENING = [
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "ReadWritePaths=/var/lib/edge-runtime",
    "PrivateTmp=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "SupplementaryGroups=video dialout",
]


def parse(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(text)
    return parser


def test_default_unit_parses_and_runs_the_daemon_as_a_notify_service() -> None:
    unit = parse(render_unit())
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecStart"] == (
        "/opt/edge-runtime/bin/edge-runtime run --config /etc/edge-runtime/config.yaml"
        " --state-dir /var/lib/edge-runtime"
    )
    assert service["User"] == service["Group"] == "edge-runtime"
    assert service["WatchdogSec"] == "30"
    assert service["Restart"] == "on-failure"
    assert int(service["RestartSec"]) > 0
    assert int(service["TimeoutStopSec"]) > 0
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_hardening_lines_are_present() -> None:
    lines = render_unit().splitlines()
    for expected in HARDENING:
        assert expected in lines


def test_arguments_reach_the_unit() -> None:
    text = render_unit(
        Path("/srv/edge/site.yaml"),
        exec_path="/usr/local/bin/edge-runtime",
        state_dir="/srv/edge/state",
        user="camera",
        watchdog_sec=60,
    )
    service = parse(text)["Service"]
    assert service["ExecStart"] == (
        "/usr/local/bin/edge-runtime run --config /srv/edge/site.yaml --state-dir /srv/edge/state"
    )
    assert service["User"] == "camera"
    assert service["WatchdogSec"] == "60"
    assert "ReadWritePaths=/srv/edge/state" in text.splitlines()


def test_relative_config_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    service = parse(render_unit(Path("config.yaml")))["Service"]
    assert f"--config {tmp_path}/config.yaml " in service["ExecStart"]


def test_devices_are_open_unless_restricted() -> None:
    assert "DevicePolicy" not in parse(render_unit())["Service"]
    restricted = render_unit(restrict_devices=True).splitlines()
    assert "DevicePolicy=closed" in restricted
    for device in ("char-video4linux", "char-ttyUSB", "char-ttyACM", "char-usb_device"):
        assert f"DeviceAllow={device} rw" in restricted


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"exec_path": "bin/edge-runtime"}, "exec_path must be an absolute path"),
        ({"state_dir": "/var/lib/edge runtime"}, "characters a unit file cannot hold"),
        ({"user": "Bad User"}, "not a valid system user name"),
        ({"watchdog_sec": -1}, "watchdog_sec"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        render_unit(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_module_entry_point_prints_the_unit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", "/etc/edge/other.yaml", "--watchdog-sec", "10"]) == 0
    service = parse(capsys.readouterr().out)["Service"]
    assert "--config /etc/edge/other.yaml" in service["ExecStart"]
    assert service["WatchdogSec"] == "10"


def test_module_entry_point_rejects_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--exec-path", "relative"]) == 2
    assert "absolute path" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("restrict", [False, True])
def test_systemd_accepts_the_unit(tmp_path: Path, restrict: bool) -> None:
    executable = shutil.which("true")
    assert executable is not None
    unit = tmp_path / "edge-runtime.service"
    unit.write_text(render_unit(exec_path=executable, restrict_devices=restrict))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "edge-runtime.service" not in result.stderr, result.stderr
