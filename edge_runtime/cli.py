"""``edge-runtime``: the device-side CLI (SPEC §5). Imports stay light: no TensorFlow, ever."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import EdgeError
from .postprocess import TASKS
from .publish.options import mqtt_options
from .redact import RedactingFormatter

log = logging.getLogger("edge_runtime")

class UsageError(EdgeError):
    """Bad usage or input: exit 2 with one line."""


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("edge-runtime: %(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def _threads_flag(_ctx: click.Context, _param: click.Parameter, value: str | None
                  ) -> int | str | None:
    if value is None or value == "auto":
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise click.BadParameter(f"{value!r} is neither a positive whole number nor auto")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-runtime")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Run LiteRT models on camera, video and sensor input; publish results over MQTT."""
    _setup_logging(verbose)


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML config.")
@click.option("--bundle", type=click.Path(path_type=Path),
              help="Bundle directory, packed .tar.gz, or a bare .tflite.")
@click.option("--source", help="Image folder, video, rtsp://, camera 0, serial://, csv:, or -.")
@mqtt_options()
@click.option("--device-id", help="Device id (default: host name).")
@click.option("--pipeline", "pipeline_name", help="Pipeline name (default: default).")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Outbox, seq, bundles.")
@click.option("--fps", type=float, help="Pace a file or folder source at this rate.")
@click.option("--max-frames", type=click.IntRange(min=1), help="Stop after N results.")
@click.option("--loop", is_flag=True, default=None, help="Repeat a file or folder source.")
@click.option("--labels", type=click.Path(path_type=Path), help="labels.txt for a bare model.")
@click.option("--task", type=click.Choice(TASKS), help="Task of a bare model.")
@click.option("--input-mean", help="Mean for a bare model (number or list).")
@click.option("--input-std", help="Std for a bare model (number or list).")
@click.option("--color", type=click.Choice(["RGB", "BGR", "GRAY"]), help="For a bare model.")
@click.option("--threads", callback=_threads_flag,
              help="Interpreter threads, or auto (default: measured on the source).")
@click.option("--delegate", help="xnnpack, edgetpu[:usb|:pci], gpu, none, or a .so path.")
@click.option("--trusted-key", "trusted_keys", multiple=True, type=click.Path(path_type=Path),
              help="ed25519 public key; only bundles signed by a trusted key load.")
@click.option("--monitor-window", type=click.IntRange(min=10),
              help="Results per health window (default 500; monitor: in the config).")
@click.option("--no-monitor", is_flag=True, default=None, help="Do not watch results.")
def run(config_path: Path | None, **flags: Any) -> None:
    """Run the daemon (from --config, or one pipeline from flags)."""
    from .daemon import Daemon
    from .runconfig import build_config

    bundle = flags.get("bundle")
    if bundle is not None and not bundle.expanduser().exists():
        # Named on the command line, it is meant to be there; a config file may name one that a
        # deploy brings later (a fresh install).
        raise UsageError(f"bundle {bundle} does not exist (leave --bundle out and the pipeline "
                         "waits for its first model from deploy)")
    config = build_config(config_path, flags)
    daemon = Daemon(config)
    daemon.install_signal_handlers()
    sys.exit(daemon.run())


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def info(bundle: Path, as_json: bool) -> None:
    """Describe a bundle (or a bare .tflite): model, input, outputs, metrics, integrity."""
    from .info import bundle_info, format_info

    data = bundle_info(bundle)
    click.echo(json.dumps(data, indent=2) if as_json else format_info(data))


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--frames", type=click.IntRange(min=10), default=300, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="Default: the profile's.")
@click.option("--json", "as_json", is_flag=True)
def bench(bundle: Path, frames: int, threads: int | None, as_json: bool) -> None:
    """Latency percentiles (invoke only and end to end), fps and RSS on this machine."""
    from .bench import format_bench, run_bench

    data = run_bench(bundle, frames=frames, threads=threads)
    click.echo(json.dumps(data, indent=2) if as_json else format_bench(data))


@cli.command()
@mqtt_options(default_url="mqtt://127.0.0.1:1883")
@click.option("--device-id", default="+", show_default=True, help="Device to watch (+: all).")
@click.option("--prefix", default="edge", show_default=True)
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many results.")
@click.option("--timeout", type=float, help="Exit after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print raw JSON lines.")
def watch(mqtt_url: str, device_id: str, prefix: str, count: int | None,
          timeout: float | None, as_json: bool, **flags: Any) -> None:
    """Pretty-print a device's results, status and metrics as they arrive."""
    from .publish.options import settings_from_flags
    from .publish.topics import topic_level
    from .watch import watch as run_watch

    if device_id != "+":
        topic_level("--device-id", device_id)
    topic_level("--prefix", prefix)
    settings = settings_from_flags(mqtt_url, flags)
    sys.exit(run_watch(settings, device_id, prefix, count=count, timeout=timeout,
                       as_json=as_json))


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), default=1883, show_default=True)
def broker(port: int) -> None:
    """Run the embedded MQTT broker on 127.0.0.1 (for trying things out without Mosquitto)."""
    try:
        from .publish.broker import run_embedded_broker
    except ImportError:
        raise UsageError("the embedded broker needs amqtt: pip install 'edge-runtime[broker]'") \
            from None
    click.echo(f"embedded broker on mqtt://127.0.0.1:{port} (Ctrl-C to stop)", err=True)
    try:
        run_embedded_broker("127.0.0.1", port)
    except KeyboardInterrupt:
        pass


@cli.group()
def samples() -> None:
    """Hard examples kept on this board (``samples: {enabled: true}``): never published."""


def _samples_root(config_path: Path | None, state_dir: Path | None) -> Path:
    from .config import load_config
    from .system.paths import default_state_dir

    if state_dir is not None:
        return state_dir / "samples"
    if config_path is not None:
        return load_config(config_path).resolved_state_dir / "samples"
    return default_state_dir() / "samples"


@samples.command("list")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML config.")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Default: the config's.")
@click.option("--json", "as_json", is_flag=True)
def samples_list(config_path: Path | None, state_dir: Path | None, as_json: bool) -> None:
    """The kept samples, oldest first: pipeline, frame, top prediction, margin."""
    from .monitor.samples import list_samples

    found = list_samples(_samples_root(config_path, state_dir))
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for s in found:
        best = (s.get("predictions") or [{}])[0]
        click.echo(f"{s['pipeline']}  {s['id']}  {s['frame']['ref']}  {best.get('label')} "
                   f"{best.get('score')}  margin {s.get('margin')}")
    click.echo(f"{len(found)} sample(s)")


@samples.command("export")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML config.")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Default: the config's.")
def samples_export(dest: Path, config_path: Path | None, state_dir: Path | None) -> None:
    """Copy the kept samples (image and result) to DEST/<pipeline>/."""
    from .monitor.samples import export_samples

    count = export_samples(_samples_root(config_path, state_dir), dest)
    click.echo(f"{count} sample(s) exported to {dest}")


@cli.command("check-config")
@click.argument("config_file", type=click.Path(path_type=Path))
def check_config(config_file: Path) -> None:
    """Validate a config file without starting anything."""
    from .runconfig import check_config_file

    for line in check_config_file(config_file):
        click.echo(line)


@cli.command("service-unit")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              default=Path("/etc/edge-runtime/config.yaml"), show_default=True)
@click.option("--state-dir", default="/var/lib/edge-runtime", show_default=True)
@click.option("--exec-path", default=None, help="Default: this edge-runtime executable.")
@click.option("--user", default="edge-runtime", show_default=True)
@click.option("--watchdog-sec", type=click.IntRange(min=0), default=30, show_default=True)
def service_unit(config_path: Path, state_dir: str, exec_path: str | None, user: str,
                 watchdog_sec: int) -> None:
    """Print the systemd unit for this daemon."""
    from edge_runtime.system.service import render_unit

    exe = exec_path or str(Path(sys.argv[0]).resolve()) if Path(sys.argv[0]).name == \
        "edge-runtime" else exec_path or "/opt/edge-runtime/bin/edge-runtime"
    click.echo(render_unit(config_path, exec_path=exe, state_dir=state_dir, user=user,
                           watchdog_sec=watchdog_sec), nl=False)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="edge-runtime", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except EdgeError as exc:
        click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(2)
    sys.exit(0)
