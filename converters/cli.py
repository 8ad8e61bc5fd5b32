"""``edge-convert``: the host-side CLI (SPEC §5)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edge_runtime.errors import EdgeError
from edge_runtime.postprocess import DECODERS, TASKS
from edge_runtime.preprocess import as_tuple
from edge_runtime.publish.options import mqtt_options

from . import __version__
from .errors import ConvertError

F = TypeVar("F", bound=Callable[..., Any])


def _err(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def _floats(_ctx: click.Context, _param: click.Parameter, value: str | None,
            ) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return as_tuple(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number or a comma-separated list") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-convert")
def cli() -> None:
    """Turn Keras models into verified int8 LiteRT bundles for edge devices."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def profiles(as_json: bool) -> None:
    """List the device profiles and their key settings."""
    from .profiles import list_profiles, profiles_table

    found = list_profiles()
    if as_json:
        click.echo(json.dumps([{"name": p.name, "description": p.description, **p.settings()}
                               for p in found], indent=2))
    else:
        click.echo(profiles_table(found))


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--profile", "profiles_", multiple=True, required=True,
              help="Device profile name or YAML file; repeat for several bundles.")
@click.option("--calibration", required=True, type=click.Path(path_type=Path),
              help="Image folder (class sub-folders), .npz with x (and y), or a video file.")
@click.option("--validation", type=click.Path(path_type=Path),
              help="Labelled data for accuracy (default: held-out calibration samples).")
@click.option("--labels", type=click.Path(path_type=Path), help="labels.txt, one per line.")
@click.option("--name", help="Bundle name (default: the model file name).")
@click.option("--version", "version_", default="1", show_default=True, help="Bundle version.")
@click.option("--input-mean", callback=_floats, help="Mean subtracted from pixels (or per channel).")
@click.option("--input-std", callback=_floats, help="Std dividing pixels (or per channel).")
@click.option("--color", type=click.Choice(["RGB", "BGR", "GRAY"]),
              help="Colour order the model expects (default from its channels).")
@click.option("--resize", type=click.Choice(["stretch", "letterbox"]), default="stretch",
              show_default=True)
@click.option("--task", type=click.Choice(TASKS))
@click.option("--decoder", type=click.Choice(sorted(DECODERS)),
              help="Detection: the decoder the daemon runs on the outputs (implies --task "
                   "detection; default from the output count: 4 → ssd, 1 → yolo).")
@click.option("--decoder-param", "decoder_params", multiple=True, metavar="KEY=VALUE",
              help="Detection: a decoder parameter (score_threshold, iou_threshold, "
                   "max_detections, layout); repeat for several.")
@click.option("--boxes", type=click.Path(path_type=Path),
              help="Detection: COCO JSON with the validation images' boxes (default: YOLO "
                   ".txt files beside the images, when there are any).")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True,
              help="Allowed drop in points (accuracy, mAP@0.5, or disagreement without "
                   "labels), judged on its 95% interval.")
@click.option("--samples", type=click.IntRange(min=1), default=300, show_default=True,
              help="Calibration samples (or all available).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bundles"),
              show_default=True)
@click.option("--allow-poor-calibration", is_flag=True,
              help="Convert even when the calibration data looks degenerate.")
@click.option("--recover", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
              help="Keep the worst layers in float when accuracy drops; on Edge TPU, with "
                   "--train, try quantization-aware training instead.")
@click.option("--train", type=click.Path(path_type=Path),
              help="Labelled data to fine-tune on (same formats as --calibration).")
@click.option("--epochs", type=int, help="Fine-tuning epochs (default: 4 pruning, 2 QAT).")
@click.option("--prune", type=float, metavar="SPARSITY",
              help="Magnitude-prune to this sparsity (0-1), fine-tuned on --train.")
@click.option("--prune-block", type=int, default=4, show_default=True,
              help="Prune neighbouring input weights in blocks of N (1: unstructured).")
@click.option("--qat", is_flag=True, help="Quantization-aware fine-tuning on --train, then a "
                                          "fully integer model.")
@click.option("--no-golden", "golden", is_flag=True, default=True, flag_value=False,
              help="Leave out golden.npz (validation inputs and their outputs for the "
                   "daemon's self-test).")
def convert(model: Path, profiles_: tuple[str, ...], calibration: Path,
            validation: Path | None, labels: Path | None, name: str | None, version_: str,
            input_mean: tuple[float, ...] | None, input_std: tuple[float, ...] | None,
            color: str | None, resize: str, task: str | None, decoder: str | None,
            decoder_params: tuple[str, ...], boxes: Path | None, max_accuracy_drop: float,
            samples: int, out: Path, allow_poor_calibration: bool, recover: str,
            train: Path | None, epochs: int | None, prune: float | None, prune_block: int,
            qat: bool, golden: bool) -> None:
    """Convert MODEL (.keras, .h5 or SavedModel dir) into one bundle per profile.

    \b
    The gate judges the drop on its 95% interval. Exit codes:
      0  every profile passed: the whole interval is within --max-accuracy-drop
      2  bad usage or input (nothing written)
      3  the gate failed: the whole interval is over it (bundle written, marked failed)
      4  undecided: the interval straddles it (bundle written and usable, marked
         undecided; the summary says how many samples would decide it)
    """
    from .convert import ConvertOptions
    from .convert import convert as run_convert
    from .detection import parse_params
    from .gate import exit_code, worst
    from .summary import summary_table

    opts = ConvertOptions(
        model=model, profiles=list(profiles_), calibration=calibration, validation=validation,
        labels=labels, name=name, version=version_, input_mean=input_mean, input_std=input_std,
        color=color, resize=resize, task=task, decoder=decoder,
        decoder_params=parse_params(decoder_params), boxes=boxes,
        max_accuracy_drop=max_accuracy_drop,
        samples=samples, out=out, allow_poor_calibration=allow_poor_calibration, recover=recover,
        train=train, epochs=epochs, prune=prune, prune_block=prune_block, qat=qat,
        golden=golden,
    )
    created_out = not out.exists()
    try:
        results = run_convert(opts, log=lambda m: click.echo(m, err=True))
    except BaseException:
        if created_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    click.echo(summary_table(results))
    failed = [r.profile for r in results if r.gate_status == "fail"]
    undecided = [r.profile for r in results if r.gate_status == "undecided"]
    if failed:
        _err(f"accuracy gate failed for {', '.join(failed)} (bundle written, marked failed)")
    if undecided:
        _err(f"accuracy gate undecided for {', '.join(undecided)} (bundle written, usable, "
             "marked undecided): more samples would decide it")
    status = worst(r.gate_status for r in results)
    if status != "pass":
        sys.exit(exit_code(status))


@cli.command()
@click.argument("teacher", type=click.Path(path_type=Path))
@click.option("--student", type=click.Path(path_type=Path),
              help="A Keras model with the teacher's input and output shapes.")
@click.option("--student-width", type=float, metavar="F",
              help="Derive the student from the teacher: filters and units × F.")
@click.option("--train", required=True, type=click.Path(path_type=Path),
              help="Labelled training data (image folder with class sub-folders, or .npz).")
@click.option("--validation", required=True, type=click.Path(path_type=Path),
              help="Labelled data the accuracies are measured on.")
@click.option("--labels", type=click.Path(path_type=Path), help="labels.txt, one per line.")
@click.option("--input-mean", callback=_floats, help="Mean subtracted from pixels.")
@click.option("--input-std", callback=_floats, help="Std dividing pixels.")
@click.option("--color", type=click.Choice(["RGB", "BGR", "GRAY"]))
@click.option("--temperature", type=float, default=2.0, show_default=True,
              help="Softens the teacher's outputs.")
@click.option("--alpha", type=float, default=0.5, show_default=True,
              help="Weight of the hard labels (the teacher's soft outputs get 1 - alpha).")
@click.option("--epochs", type=int, default=15, show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="FILE.keras")
def distill(teacher: Path, student: Path | None, student_width: float | None, train: Path,
            validation: Path, labels: Path | None, input_mean: tuple[float, ...] | None,
            input_std: tuple[float, ...] | None, color: str | None, temperature: float,
            alpha: float, epochs: int, out: Path) -> None:
    """Train a smaller student from TEACHER's softened outputs and the labels."""
    from .optimize.distill_cmd import DistillOptions, distill_table
    from .optimize.distill_cmd import distill as run_distill

    record = run_distill(DistillOptions(
        teacher=teacher, student=student, width=student_width, train=train,
        validation=validation, out=out, labels=labels, input_mean=input_mean,
        input_std=input_std, color=color, temperature=temperature, alpha=alpha, epochs=epochs,
    ), log=lambda m: click.echo(m, err=True))
    click.echo(distill_table(record))
    click.echo(f"student written to {out}")


def _levels(_ctx: click.Context, _param: click.Parameter, value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()] if value else []
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of sparsities"
                                 ) from None


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--profile", required=True, help="Device profile name or YAML file.")
@click.option("--train", required=True, type=click.Path(path_type=Path),
              help="Labelled training data (also the calibration data unless --calibration).")
@click.option("--validation", required=True, type=click.Path(path_type=Path),
              help="Labelled data every variant is measured and gated on.")
@click.option("--calibration", type=click.Path(path_type=Path), help="Calibration data.")
@click.option("--labels", type=click.Path(path_type=Path), help="labels.txt, one per line.")
@click.option("--name", help="Bundle name prefix (default: the model file name).")
@click.option("--input-mean", callback=_floats, help="Mean subtracted from pixels.")
@click.option("--input-std", callback=_floats, help="Std dividing pixels.")
@click.option("--color", type=click.Choice(["RGB", "BGR", "GRAY"]))
@click.option("--prune", "prune_levels", default="0.5,0.75", show_default=True,
              callback=_levels, help="Sparsities to try, comma-separated ('' for none).")
@click.option("--qat", is_flag=True, help="Also try quantization-aware training.")
@click.option("--distill-width", type=float, metavar="F",
              help="Also distil a student at this width and try its variants.")
@click.option("--student", type=click.Path(path_type=Path),
              help="A student made by `edge-convert distill`, instead of --distill-width.")
@click.option("--epochs", type=int, help="Fine-tuning epochs for pruning and QAT.")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("sweep"), show_default=True)
def sweep(model: Path, profile: str, train: Path, validation: Path, calibration: Path | None,
          labels: Path | None, name: str | None, input_mean: tuple[float, ...] | None,
          input_std: tuple[float, ...] | None, color: str | None, prune_levels: list[float],
          qat: bool, distill_width: float | None, student: Path | None, epochs: int | None,
          max_accuracy_drop: float, out: Path) -> None:
    """Convert MODEL's optimization variants for one profile and recommend one."""
    from .optimize.sweep import SweepOptions, sweep_table
    from .optimize.sweep import sweep as run_sweep

    result = run_sweep(SweepOptions(
        model=model, profile=profile, train=train, validation=validation, out=out,
        calibration=calibration, labels=labels, name=name, input_mean=input_mean,
        input_std=input_std, color=color, prune=prune_levels, qat=qat,
        distill_width=distill_width, student=student, epochs=epochs,
        max_accuracy_drop=max_accuracy_drop), log=lambda m: click.echo(m, err=True))
    click.echo(sweep_table(result))
    click.echo(f"report: {out / 'sweep.html'}")
    if result["recommended"] is None:
        _err("no variant passed the accuracy gate")
        sys.exit(3)


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Labelled image folder or .npz to check against.")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True)
@click.option("--allow-poor-data", is_flag=True,
              help="Verify even when DATA fails the calibration hygiene checks.")
@click.option("--json", "as_json", is_flag=True)
def verify(bundle: Path, data: Path, max_accuracy_drop: float, allow_poor_data: bool,
           as_json: bool) -> None:
    """Re-check a bundle: integrity, loading, the data's hygiene, accuracy on DATA (with its 95%
    interval), latency. Exit 3 when even the interval's top is more than --max-accuracy-drop
    below the float accuracy in the manifest."""
    from .recheck import recheck

    report = recheck(bundle, data, allow_poor_data=allow_poor_data)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            click.echo(f"{key:>22}: {value}")
    reference = report.get("manifest_float_accuracy")
    measured = report.get("accuracy")
    if reference is not None and measured is not None:
        high = report["accuracy_ci95"][1]
        if (reference - high) * 100 > max_accuracy_drop:
            _err(f"accuracy {measured:.4f} (95% CI up to {high:.4f}) is more than "
                 f"{max_accuracy_drop} points below the float model's {reference:.4f}")
            sys.exit(3)


SEQUENCE_HELP = ("Release sequence signed into the bundle; devices refuse one older than they "
                 "served (default: the time in ms, above any earlier signature's).")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--sign-key", type=click.Path(path_type=Path), help="ed25519 private key.")
@click.option("--sequence", type=click.IntRange(min=0), help=SEQUENCE_HELP)
@click.option("--group", "groups", multiple=True,
              help="Sign for devices in this group only; repeat for several.")
def pack(bundle: Path, sign_key: Path | None, sequence: int | None,
         groups: tuple[str, ...]) -> None:
    """Write BUNDLE.tar.gz beside the bundle directory (signed with --sign-key)."""
    from edge_runtime.bundles.manifest import load_bundle_dir
    from edge_runtime.bundles.packing import pack_bundle

    if (sequence is not None or groups) and sign_key is None:
        raise ConvertError("--sequence and --group are signed: give --sign-key")
    load_bundle_dir(bundle)
    archive = pack_bundle(bundle, sign_key=sign_key, sequence=sequence, groups=groups)
    click.echo(str(archive))


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
def keygen(directory: Path) -> None:
    """Write DIR/edge-signing.key (private, mode 600) and DIR/edge-signing.pub."""
    from edge_runtime.bundles.signing import generate_keypair

    private, public = generate_keypair(directory)
    click.echo(f"private key: {private}\npublic key:  {public}  (copy this one to the devices)")


@cli.command("deploy")
@click.argument("bundle", type=click.Path(path_type=Path))
@mqtt_options(required=True)
@click.option("--device", "devices", multiple=True, help="Device id; repeat for several.")
@click.option("--group", "groups", multiple=True,
              help="Devices that joined this group (the bundle is signed for it).")
@click.option("--sign-key", type=click.Path(path_type=Path), help="ed25519 private key.")
@click.option("--sequence", type=click.IntRange(min=0), help=SEQUENCE_HELP)
@click.option("--pipeline", help="Pipeline to update on each device (default: its only one).")
@click.option("--prefix", default="edge", show_default=True)
@click.option("--timeout", type=float, default=120.0, show_default=True)
@click.option("--chunk-size", type=click.IntRange(min=1024), default=256 * 1024,
              show_default=True, help="Largest bundle piece per MQTT message (bytes).")
@click.option("--canary", type=click.IntRange(min=1),
              help="Deploy to the first N devices first, in shadow with automatic promotion; "
                   "the rest once those are healthy.")
@click.option("--promote-frames", type=click.IntRange(1, 100_000), default=200,
              show_default=True, help="Canaries: frames compared before promoting.")
@click.option("--promote-agreement", type=click.FloatRange(0, 1), default=0.95,
              show_default=True, help="Canaries: top-1 agreement needed to promote.")
@click.option("--shadow-every", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Canaries: every Nth frame also goes through the candidate.")
def deploy_cmd(bundle: Path, mqtt_url: str, devices: tuple[str, ...],
               groups: tuple[str, ...], sign_key: Path | None, sequence: int | None,
               pipeline: str | None, prefix: str, timeout: float, chunk_size: int,
               canary: int | None, promote_frames: int, promote_agreement: float,
               shadow_every: int, **mqtt_flags: Any) -> None:
    """Pack, sign and push BUNDLE to devices; wait for each verdict."""
    from edge_runtime.publish.options import settings_from_flags

    from .canary import CanaryPlan
    from .deploy import deploy, results_table

    if not devices and not groups:
        raise ConvertError("give at least one --device or --group")
    settings = settings_from_flags(mqtt_url, mqtt_flags)
    plan = None if canary is None else CanaryPlan(canary, promote_frames, promote_agreement,
                                                  shadow_every, timeout)
    results = deploy(bundle, url=settings, devices=devices, groups=groups,
                     sign_key=sign_key, sequence=sequence, prefix=prefix, pipeline=pipeline,
                     timeout=timeout, chunk_size=chunk_size, canary=plan)
    click.echo(results_table(results))
    if not all(r.ok for r in results):
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="edge-convert", standalone_mode=False)
    except click.exceptions.Abort:
        _err("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except EdgeError as exc:
        _err(exc.one_line())
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(0)
