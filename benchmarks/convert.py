"""What a conversion costs and what it gives, through the real ``edge-convert convert`` CLI.

Two models:

* ``digits``: the sample CNN trained here on scikit-learn's real handwritten digits (28x28 gray),
  calibrated on the train split, verified on the validation split → accuracy float vs int8;
* ``mobilenetv2``: ``keras.applications.MobileNetV2(weights=None)`` at 224x224 RGB, random
  weights, calibrated on crops of scikit-learn's two sample photos and verified on other crops →
  with random weights accuracy means nothing, so the figure is top-1 agreement float vs int8.

Per model and profile: wall time of the whole CLI call (TensorFlow child processes included) and
of the per-profile step, size float → quantized, accuracy (or agreement) and its drop, and the
median invoke latency float vs quantized that the converter measured on this host. Host figures
are not board figures: on x86 without VNNI an int8 model can be slower than float32.

    python benchmarks/convert.py [--models digits,mobilenetv2] [--profile rpi4]
                                 [--calibration-frames 300] [--work DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.system.sysinfo import machine_description

MODELS = ("digits", "mobilenetv2")
INPUT_SIZE = 224
VALIDATION_FRAMES = 100
CLI_TIMEOUT_S = 3600.0

# In a child: the benchmark process itself stays free of TensorFlow, like the converter.
MAKE_MOBILENET = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
keras.utils.set_random_seed(0)
keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3)).save(sys.argv[1])
"""


@dataclass
class Case:
    """One model to convert: the file, its data and the flags that describe its input."""

    name: str
    model: Path
    calibration: Path
    validation: Path
    flags: list[str] = field(default_factory=list)


def quiet_env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def edge_convert() -> str:
    exe = Path(sys.executable).parent / "edge-convert"
    return str(exe) if exe.exists() else "edge-convert"


# --- the models and their data ----------------------------------------------------------------


def digits_case(work: Path) -> Case:
    root = work / "digits"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "converters.samples", "digits", str(root),
                    "--no-video"], check=True, env=quiet_env(), capture_output=True)
    log(f"digits: sample data and model ready in {time.perf_counter() - started:.1f} s")
    return Case("digits", root / "digits.keras", root / "images" / "train",
                root / "images" / "val",
                ["--labels", str(root / "labels.txt"), "--input-mean", "0", "--input-std", "255",
                 "--color", "GRAY"])


def mobilenet_case(work: Path, calibration_frames: int) -> Case:
    root = work / "mobilenetv2"
    root.mkdir(parents=True, exist_ok=True)
    model = root / "mobilenetv2.keras"
    if not model.is_file():
        subprocess.run([sys.executable, "-c", MAKE_MOBILENET, str(model)], check=True,
                       env=quiet_env(), capture_output=True)
    photos = sample_photos()
    write_crops(root / "calibration", photos, calibration_frames, seed=0)
    write_crops(root / "validation", photos, VALIDATION_FRAMES, seed=1)
    return Case("mobilenetv2", model, root / "calibration", root / "validation",
                ["--input-mean", "127.5", "--input-std", "127.5", "--color", "RGB",
                 "--task", "classification"])


def sample_photos() -> list[np.ndarray]:
    """scikit-learn's two sample photos (a temple, a flower), in OpenCV's BGR order."""
    from sklearn.datasets import load_sample_images

    return [cv2.cvtColor(img, cv2.COLOR_RGB2BGR) for img in load_sample_images().images]


def write_crops(folder: Path, photos: list[np.ndarray], count: int, seed: int) -> None:
    """Camera-like frames: crops at random places and scales, some mirrored, lighter or darker."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        photo = photos[index % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(h // 3, h + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = cv2.resize(photo[y:y + side, x:x + side], (INPUT_SIZE, INPUT_SIZE),
                          interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        gain = float(rng.uniform(0.6, 1.3))
        crop = np.clip(crop.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{index:04d}.jpg"), crop, [cv2.IMWRITE_JPEG_QUALITY, 92])


# --- running and reading the converter --------------------------------------------------------


def convert(case: Case, profile: str, out: Path, samples: int) -> dict[str, Any]:
    """Run the CLI once; the gate is opened wide so every model yields a bundle to measure."""
    command = [edge_convert(), "convert", str(case.model), "--profile", profile,
               "--calibration", str(case.calibration), "--validation", str(case.validation),
               "--samples", str(samples), "--max-accuracy-drop", "100", "--recover", "off",
               "--name", case.name, "--out", str(out), *case.flags]
    log(f"{case.name}: converting for {profile} …")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=quiet_env(),
                          timeout=CLI_TIMEOUT_S, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"edge-convert failed for {case.name} (exit {done.returncode}):\n"
                         f"{done.stderr[-2000:]}")
    bundle = out / f"{case.name}-{profile}"
    manifest = json.loads((bundle / "manifest.json").read_text())
    report = json.loads((bundle / "report.json").read_text())
    return figures(case.name, profile, manifest, report, wall)


def figures(model: str, profile: str, manifest: dict[str, Any], report: dict[str, Any],
            wall_s: float) -> dict[str, Any]:
    m = manifest["metrics"]
    errors = [layer["rmse_over_scale"] for layer in report.get("layers") or []]
    shares = manifest["reference_stats"].get("predicted_class_share", {})
    float_acc, quant_acc = m["float_accuracy"], m["int8_accuracy"]
    return {
        "model": model, "profile": profile,
        "quantization": manifest["profile"]["quantization"],
        "convert_wall_s": round(wall_s, 1),
        "profile_step_s": m["conversion_s"],
        "float_bytes": m["float_size_bytes"], "quant_bytes": m["size_bytes"],
        "size_ratio": round(m["float_size_bytes"] / m["size_bytes"], 2),
        "float_accuracy": float_acc, "quant_accuracy": quant_acc,
        "accuracy_drop_points": manifest["gate"]["accuracy_drop"],
        "gate_basis": manifest["gate"]["basis"],
        "agreement": m["agreement"], "samples": m["samples"],
        "calibration_samples": manifest["calibration"]["samples"],
        "host_latency_ms": m["host_latency_ms"],
        "latency_threads": min(int(manifest["profile"]["threads"]), os.cpu_count() or 1),
        "fully_integer": m["fully_integer"],
        # quantization error per layer in quantization steps (RMSE / scale), from the debugger
        "layer_error": {"median": round(float(np.median(errors)), 3) if errors else None,
                        "worst": round(max(errors), 3) if errors else None,
                        "layers": len(errors)},
        # a model whose predictions collapse onto one class makes agreement meaningless
        "distinct_predictions": sum(1 for share in shares.values() if share > 0),
    }


# --- output -----------------------------------------------------------------------------------


def print_table(results: Sequence[dict[str, Any]]) -> None:
    header = ("model", "profile", "convert", "size float→quant", "ratio", "acc float",
              "acc quant", "drop", "agree", "layer err", "lat float", "lat quant")
    rows = [header]
    for r in results:
        lat = r["host_latency_ms"]
        rows.append((
            r["model"], r["profile"], f"{r['convert_wall_s']:.0f} s",
            f"{_size(r['float_bytes'])}→{_size(r['quant_bytes'])}", f"×{r['size_ratio']:.2f}",
            _pct(r["float_accuracy"]), _pct(r["quant_accuracy"]),
            f"{r['accuracy_drop_points']:.2f} pt ({r['gate_basis']})", _pct(r["agreement"]),
            _layer_error(r["layer_error"]), f"{lat['float']:.2f} ms", f"{lat['int8']:.2f} ms",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for r in results:
        if r["distinct_predictions"] <= 1:
            print(f"note: {r['model']}: every validation frame gets the same top-1 class, so "
                  "agreement says nothing; the layer error does")
    print("layer err: median / worst per-layer RMSE in quantization steps")
    print(f"machine: {machine_description()}; latencies are host medians over "
          f"{results[0]['latency_threads'] if results else '?'} thread(s), not board figures")


def _layer_error(error: dict[str, Any]) -> str:
    if error["median"] is None:
        return "n/a"
    return f"{error['median']:.2f}/{error['worst']:.2f}"


def _size(n: int) -> str:
    return f"{n / 1024:.0f}K" if n < 10 * 2**20 else f"{n / 2**20:.1f}M"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/convert.py",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--profile", action="append", help="device profile (repeatable; rpi4)")
    parser.add_argument("--calibration-frames", type=int, default=300,
                        help="calibration samples per model")
    parser.add_argument("--work", type=Path, help="keep models, data and bundles here")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    args.profile = args.profile or ["rpi4"]
    return args


def run(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    results = []
    for name in args.models:
        case = digits_case(work) if name == "digits" else \
            mobilenet_case(work, args.calibration_frames)
        for profile in args.profile:
            results.append(convert(case, profile, work / "bundles", args.calibration_frames))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        results = run(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
            results = run(args, Path(tmp))
    print_table(results)
    if args.json:
        report = {"machine": machine_description(), "cpus": os.cpu_count(), "results": results}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
