"""Stage the device installer under a temporary root, twice, with a real pip install."""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, Mosquitto, Received, Subscriber

from edge_runtime.config import load_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install-device.sh"
TEMPLATE_MARKER = "# template used by the staging test"


def installer_env() -> dict[str, str]:
    env = {
        **os.environ,
        "EDGE_VENV_PYTHON": sys.executable,
        # Dependencies are checked elsewhere; here the package itself must install and import.
        "EDGE_PIP_ARGS": "--no-deps",
    }
    env.pop("EDGE_VENV_SYSTEM_SITE", None)
    return env


def run_installer(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True, text=True, env=installer_env(), cwd="/", timeout=timeout, check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root staged once, with the project's own default config."""
    root = tmp_path_factory.mktemp("stage") / "root"
    result = run_installer("--root", str(root), "--no-start")
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def test_every_file_is_staged_with_its_permissions(staged: Path) -> None:
    root = staged
    config = root / "etc/edge-runtime/config.yaml"
    assert config.read_text() == (root / "etc/edge-runtime/config.yaml.example").read_text()
    assert mode(config) == 0o640
    assert mode(root / "etc/edge-runtime") == 0o750
    assert mode(root / "etc/edge-runtime/trusted-keys") == 0o755
    assert mode(root / "var/lib/edge-runtime") == 0o750
    assert mode(root / "etc/systemd/system/edge-runtime.service") == 0o644
    post_install = root / "opt/edge-runtime/share/edge-runtime/post-install.sh"
    assert mode(post_install) == 0o755
    assert "useradd --system" in post_install.read_text()


def test_default_config_passes_the_config_check(staged: Path) -> None:
    config = load_config(staged / "etc/edge-runtime/config.yaml")
    assert config.pipelines


def test_the_installed_service_starts_cleanly_before_any_model_is_copied(
        staged: Path, tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The installed config names a bundle that is not there yet and a camera: the daemon comes
    up online with its pipeline waiting for a model from deploy, and stops cleanly."""
    config = staged / "etc/edge-runtime/config.yaml"
    device = "fresh-install"
    with Subscriber(mosquitto, [f"edge/{device}/status"]) as sub, DaemonProcess(
            ["--config", str(config), "--state-dir", str(tmp_path / "state"), "--mqtt",
             mosquitto.url, "--device-id", device], tmp_path / "logs") as daemon:
        def waiting(messages: list[Received]) -> bool:
            return any(m.json()["state"] == "online"
                       and m.json().get("pipelines", {}).get("default", {}).get("state")
                       == "waiting" for m in messages)

        assert sub.wait_until(waiting, 30), daemon.tail()
        assert daemon.alive and "waiting for a model from deploy" in daemon.stderr()
        assert daemon.terminate() == 0, daemon.tail()


def test_unit_points_at_the_target_paths(staged: Path) -> None:
    root = staged
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string((root / "etc/systemd/system/edge-runtime.service").read_text())
    assert parser["Service"]["ExecStart"] == (
        "/opt/edge-runtime/bin/edge-runtime run --config /etc/edge-runtime/config.yaml"
        " --state-dir /var/lib/edge-runtime"
    )
    assert parser["Service"]["Type"] == "notify"


def test_venv_imports_the_package_without_tensorflow(staged: Path) -> None:
    root = staged
    venv = root / "opt/edge-runtime"
    probe = (
        "import importlib.util, edge_runtime, edge_runtime.system.service;"
        "print(edge_runtime.__file__);"
        "print(importlib.util.find_spec('tensorflow') is None)"
    )
    result = subprocess.run(
        [str(venv / "bin/python"), "-c", probe],
        capture_output=True, text=True, cwd="/", check=True, timeout=60,
    )
    location, no_tensorflow = result.stdout.split()
    assert Path(location).is_relative_to(venv)
    assert no_tensorflow == "True"


def test_staged_scripts_name_the_target_interpreter(staged: Path) -> None:
    root = staged
    first_line = (root / "opt/edge-runtime/bin/edge-runtime").read_text().splitlines()[0]
    assert first_line == "#!/opt/edge-runtime/bin/python"


def test_second_run_keeps_user_edits(staged: Path, tmp_path: Path) -> None:
    root = staged
    config = root / "etc/edge-runtime/config.yaml"
    edited = config.read_text() + "# edited on the board\n"
    config.write_text(edited)
    template = tmp_path / "template.yaml"
    template.write_text(f"{TEMPLATE_MARKER}\n")
    result = run_installer("--root", str(root), "--no-start", "--config-template", str(template))
    assert result.returncode == 0, result.stdout + result.stderr
    assert config.read_text() == edited
    assert (root / "etc/edge-runtime/config.yaml.example").read_text() == template.read_text()
    assert "Reusing the venv" in result.stdout
    assert "Keeping the existing" in result.stdout
    assert (root / "etc/systemd/system/edge-runtime.service").is_file()


def test_unknown_option_is_a_usage_error(tmp_path: Path) -> None:
    result = run_installer("--root", str(tmp_path), "--frobnicate", timeout=30)
    assert result.returncode == 2
    assert "unknown option --frobnicate" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_template_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = run_installer("--root", str(tmp_path / "r"), "--config-template", str(missing))
    assert result.returncode == 1
    assert f"config template {missing} does not exist" in result.stderr


def _can_fake_a_system() -> bool:
    # A private mount namespace hides the real /etc, /opt and /var/lib; with systemd running,
    # systemctl would still reach the host's manager, so the test stays away from such hosts.
    if os.geteuid() != 0 or shutil.which("unshare") is None or Path("/run/systemd/system").exists():
        return False
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_fake_a_system(), reason="needs root, unshare and no running systemd")
def test_real_install_creates_the_user_and_sets_ownership(tmp_path: Path) -> None:
    fake = {"etc": tmp_path / "etc", "opt": tmp_path / "opt", "var/lib": tmp_path / "varlib"}
    shutil.copytree("/etc", fake["etc"], symlinks=True)
    fake["opt"].mkdir()
    fake["var/lib"].mkdir()
    binds = " && ".join(f"mount --bind {src} /{target}" for target, src in fake.items())
    script = f"{binds} && exec bash {SCRIPT} --no-start"
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
        capture_output=True, text=True, env=installer_env(), cwd="/", timeout=240, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    user = pwd_entry(fake["etc"] / "passwd", "edge-runtime")
    groups = (fake["etc"] / "group").read_text().splitlines()
    for group in ("video", "dialout"):
        line = next(g for g in groups if g.startswith(f"{group}:"))
        assert "edge-runtime" in line.rsplit(":", 1)[1].split(",")
    assert (fake["var/lib"] / "edge-runtime").stat().st_uid == user[0]
    config = fake["etc"] / "edge-runtime/config.yaml"
    assert (config.stat().st_uid, config.stat().st_gid) == (0, user[1])
    assert user[2] == "/usr/sbin/nologin"


def pwd_entry(passwd: Path, name: str) -> tuple[int, int, str]:
    for line in passwd.read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3]), fields[6]
    raise AssertionError(f"{name} not in {passwd}")
