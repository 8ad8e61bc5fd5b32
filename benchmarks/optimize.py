"""What pruning, quantization-aware training, distillation and the sweep give, through the real
``edge-convert`` CLI on real data (SPEC §8).

Models and data (made once under ``.cache/bench/optimize/``):

* ``digits``: the sample CNN on scikit-learn's handwritten digits (28x28 gray);
* ``textures``: 96x96 patches of eight photographs scikit-image ships (the class is the photo;
  validation patches come from a part of each photo no training patch saw), with a small
  BatchNorm CNN trained on them;
* ``multiscale``: a CNN on the same patches at 48x48 whose classifier reads the global average of
  every stage, concatenated, without BatchNorm: the stages' ranges differ about tenfold and int8
  gives a concatenation one scale, so plain int8 loses accuracy that QAT wins back;
* ``third-party.h5``: a CNN built and saved by tf-keras (Keras 2's HDF5 format), as a model from
  elsewhere would arrive.

Figures: per case, plain int8 against the optimized bundle: accuracy float / int8, size raw and
gzipped, host latency, parameters; the wall time of each CLI call. Host latencies are not board
latencies, and XNNPACK gains no int8 speed from sparsity.

    python benchmarks/optimize.py [--cases digits,textures,multiscale,h5] [--work DIR]
                                  [--json PATH] [--docs DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CASES = ("digits", "textures", "multiscale", "h5")
CLI_TIMEOUT_S = 7200.0

# Training runs in children: the benchmark itself stays free of TensorFlow, like the converter.
TRAIN = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from pathlib import Path
import cv2, numpy as np, keras

kind, root, out, epochs = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
labels = (root / "labels.txt").read_text().split()

L = keras.layers

def load(split):
    xs, ys = [], []
    for i, label in enumerate(labels):
        for p in sorted((root / "images" / split / label).glob("*.png")):
            xs.append(cv2.imread(str(p))); ys.append(i)
    if kind == "multiscale":  # at 48x48, resized as the board will do it
        from edge_runtime.preprocess import InputSpec, preprocess_batch
        spec = InputSpec(shape=(1, 48, 48, 3), color="RGB", mean=(127.5,), std=(127.5,))
        return preprocess_batch(xs, spec), np.array(ys)
    xs = [cv2.cvtColor(x, cv2.COLOR_BGR2RGB) for x in xs]
    return (np.stack(xs).astype("float32") - 127.5) / 127.5, np.array(ys)

def multiscale(classes):
    inputs = keras.Input((48, 48, 3)); x = inputs; stages = []
    for width in (16, 32, 64):
        x = L.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = L.MaxPooling2D()(x)
        stages.append(L.GlobalAveragePooling2D()(x))
    outputs = L.Dense(classes, activation="softmax")(L.Concatenate()(stages))
    return keras.Model(inputs, outputs, name="multiscale")

keras.utils.set_random_seed(0)
x, y = load("train")
if kind == "multiscale":
    model = multiscale(len(labels))
else:
    model = keras.Sequential([keras.Input((96, 96, 3)),
        L.Conv2D(16, 3, strides=2), L.BatchNormalization(momentum=0.9), L.ReLU(),
        L.Conv2D(32, 3, strides=2), L.BatchNormalization(momentum=0.9), L.ReLU(),
        L.Conv2D(64, 3, strides=2), L.BatchNormalization(momentum=0.9), L.ReLU(),
        L.GlobalAveragePooling2D(), L.Dense(len(labels), activation="softmax")], name="textures")
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
model.fit(x, y, batch_size=32, epochs=epochs, shuffle=True, verbose=2)
# Short runs leave BatchNorm's moving statistics behind the weights: refresh them.
bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
for l in bns:
    l.momentum = 0.8
for _ in range(2):
    for s in range(0, len(x), 128):
        model(x[s:s + 128], training=True)
for l in bns:
    l.momentum = 0.99
xv, yv = load("val")
print("validation accuracy", float(np.mean(model.predict(xv, verbose=0).argmax(1) == yv)))
model.save(out)
"""

THIRD_PARTY = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from pathlib import Path
import cv2, numpy as np, tf_keras as k

root, out = Path(sys.argv[1]), sys.argv[2]
labels = (root / "labels.txt").read_text().split()
xs, ys = [], []
for i, label in enumerate(labels):
    for p in sorted((root / "images" / "train" / label).glob("*.png")):
        g = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2GRAY)
        xs.append(cv2.resize(g, (28, 28), interpolation=cv2.INTER_AREA)[..., None] / 255.0)
        ys.append(i)
k.utils.set_random_seed(0)
model = k.Sequential([k.Input((28, 28, 1)), k.layers.Conv2D(16, 3, activation="relu"),
    k.layers.MaxPooling2D(), k.layers.Conv2D(32, 3, activation="relu"), k.layers.MaxPooling2D(),
    k.layers.Flatten(), k.layers.Dense(64, activation="relu"),
    k.layers.Dense(10, activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(np.stack(xs).astype("float32"), np.array(ys), epochs=10, verbose=2)
model.save(out)
"""


def quiet_env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cli(*args: str | Path, expect: tuple[int, ...] = (0,)) -> tuple[str, float]:
    exe = Path(sys.executable).parent / "edge-convert"
    command = [str(exe) if exe.exists() else "edge-convert", *map(str, args)]
    log("$ " + " ".join(command[1:3]) + " …")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=quiet_env(),
                          timeout=CLI_TIMEOUT_S, check=False)
    wall = time.perf_counter() - started
    if done.returncode not in expect:
        raise SystemExit(f"edge-convert {args[0]} failed (exit {done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    return done.stdout, wall


def train(kind: str, root: Path, out: Path, epochs: int) -> None:
    if out.is_file():
        return
    log(f"training {kind} ({epochs} epochs) …")
    done = subprocess.run([sys.executable, "-c", TRAIN, kind, str(root), str(out), str(epochs)],
                          capture_output=True, text=True, env=quiet_env(), check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    log(done.stdout.strip().splitlines()[-1])


def data_flags(root: Path, image: str) -> list[str]:
    flags = ["--labels", str(root / "labels.txt")]
    if image == "gray":
        return [*flags, "--input-mean", "0", "--input-std", "255", "--color", "GRAY"]
    return [*flags, "--input-mean", "127.5", "--input-std", "127.5", "--color", "RGB"]


def bundle_figures(bundle: Path, wall: float) -> dict[str, Any]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    report = json.loads((bundle / "report.json").read_text())
    m = manifest["metrics"]
    opt = report.get("optimization") or {}
    return {"bundle": str(bundle), "wall_s": round(wall, 1),
            "float_accuracy": m["float_accuracy"], "int8_accuracy": m["int8_accuracy"],
            "agreement": m["agreement"], "size_bytes": m["size_bytes"],
            "gzip_bytes": m["gzip_bytes"], "float_size_bytes": m["float_size_bytes"],
            "host_latency_ms": m["host_latency_ms"], "fully_integer": m["fully_integer"],
            "gate": manifest["gate"], "optimization": manifest["optimization"],
            "recovery": manifest.get("recovery"), "plain": opt.get("plain"),
            "pruning_layers": (opt.get("pruning") or {}).get("layers"),
            "qat": opt.get("qat")}


def convert_case(model: Path, root: Path, image: str, profile: str, out: Path, name: str,
                 *extra: str | Path, expect: tuple[int, ...] = (0, 3)) -> dict[str, Any]:
    _, wall = cli("convert", model, "--profile", profile, "--calibration",
                  root / "images" / "train", "--validation", root / "images" / "val",
                  *data_flags(root, image), "--name", name, "--out", out, *extra, expect=expect)
    return bundle_figures(out / f"{name}-{profile}", wall)


def distill_case(model: Path, root: Path, image: str, out: Path) -> dict[str, Any]:
    stdout, wall = cli("distill", model, "--student-width", "0.5", "--train",
                       root / "images" / "train", "--validation", root / "images" / "val",
                       *data_flags(root, image), "--out", out)
    from converters.optimize.provenance import read_provenance

    return {"wall_s": round(wall, 1), "table": stdout, **(read_provenance(out) or {})}


def run_digits(work: Path, docs: Path | None) -> dict[str, Any]:
    root = work / "digits"
    subprocess.run([sys.executable, "-m", "converters.samples", "digits", str(root),
                    "--no-video"], check=True, env=quiet_env(), capture_output=True)
    model, out = root / "digits.keras", work / "digits-out"
    shutil.rmtree(out, ignore_errors=True)
    result: dict[str, Any] = {
        "prune50": convert_case(model, root, "gray", "rpi4", out, "digits-p50", "--train",
                                root / "images" / "train", "--prune", "0.5"),
        "prune50_unstructured": convert_case(model, root, "gray", "rpi4", out, "digits-p50u",
                                             "--train", root / "images" / "train", "--prune",
                                             "0.5", "--prune-block", "1"),
        "qat_coral": convert_case(model, root, "gray", "coral-usb", out, "digits-qat",
                                  "--train", root / "images" / "train", "--qat"),
        "distill": distill_case(model, root, "gray", out / "student.keras"),
    }
    stdout, wall = cli("sweep", model, "--profile", "rpi4", "--train", root / "images" / "train",
                       "--validation", root / "images" / "val", *data_flags(root, "gray"),
                       "--prune", "0.5,0.75", "--qat", "--student", out / "student.keras",
                       "--name", "digits", "--out", out / "sweep")
    result["sweep"] = {"wall_s": round(wall, 1), "table": stdout,
                       **json.loads((out / "sweep" / "sweep.json").read_text())}
    if docs is not None:
        from converters.optimize.sweep_report import markdown_table

        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "sweep" / "sweep.png", docs / "sweep-digits-rpi4.png")
        (docs / "sweep-digits-rpi4.md").write_text(markdown_table(result["sweep"]) + "\n")
    return result


def run_textures(work: Path) -> dict[str, Any]:
    from converters.samples import make_textures

    root = make_textures(work / "textures")
    model, out = root / "textures.keras", work / "textures-out"
    train("textures", root, model, 20)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "prune50": convert_case(model, root, "rgb", "rpi4", out, "textures-p50", "--train",
                                root / "images" / "train", "--prune", "0.5"),
        "qat_coral": convert_case(model, root, "rgb", "coral-usb", out, "textures-qat",
                                  "--train", root / "images" / "train", "--qat"),
        "distill": distill_case(model, root, "rgb", out / "student.keras"),
    }


def run_multiscale(work: Path) -> dict[str, Any]:
    """Plain int8, --qat, and plain int8 with --train so that recovery tries QAT, on coral-usb."""
    from converters.samples import make_textures

    root = make_textures(work / "textures")
    model, out = work / "multiscale_48.keras", work / "multiscale-out"
    train("multiscale", root, model, 30)
    shutil.rmtree(out, ignore_errors=True)
    train_flags = ("--train", str(root / "images" / "train"))
    return {
        "ptq_coral": convert_case(model, root, "rgb", "coral-usb", out, "ms-ptq",
                                  "--recover", "off"),
        "qat_coral": convert_case(model, root, "rgb", "coral-usb", out, "ms-qat",
                                  *train_flags, "--qat", "--epochs", "3"),
        "ptq_then_recovery_coral": convert_case(model, root, "rgb", "coral-usb", out,
                                                "ms-recover", *train_flags, "--epochs", "3"),
    }


def run_h5(work: Path) -> dict[str, Any]:
    root = work / "digits"
    subprocess.run([sys.executable, "-m", "converters.samples", "digits", str(root),
                    "--no-video"], check=True, env=quiet_env(), capture_output=True)
    model, out = work / "third-party.h5", work / "h5-out"
    if not model.is_file():
        done = subprocess.run([sys.executable, "-c", THIRD_PARTY, str(root), str(model)],
                              capture_output=True, text=True, env=quiet_env(), check=False)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
    shutil.rmtree(out, ignore_errors=True)
    return {"qat_coral": convert_case(model, root, "gray", "coral-usb", out, "h5-qat",
                                      "--train", root / "images" / "train", "--qat"),
            "prune50": convert_case(model, root, "gray", "rpi4", out, "h5-p50", "--train",
                                    root / "images" / "train", "--prune", "0.5")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--work", type=Path, default=Path(".cache/bench/optimize"))
    parser.add_argument("--json", type=Path, help="Write every figure here.")
    parser.add_argument("--docs", type=Path, help="Copy the digits sweep plot and table here.")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    runners = {"digits": lambda: run_digits(args.work, args.docs),
               "textures": lambda: run_textures(args.work),
               "multiscale": lambda: run_multiscale(args.work), "h5": lambda: run_h5(args.work)}
    results: dict[str, Any] = {}
    for case in args.cases.split(","):
        started = time.perf_counter()
        results[case] = runners[case]()
        log(f"{case}: done in {time.perf_counter() - started:.0f} s")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps(summary(results), indent=2))
    return 0


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the README quotes."""
    out: dict[str, Any] = {}
    for case, items in results.items():
        for key, r in items.items():
            if "int8_accuracy" in r:
                plain = r.get("plain") or {}
                out[f"{case}/{key}"] = {
                    "float": r["float_accuracy"], "int8": r["int8_accuracy"],
                    "size": r["size_bytes"], "gzip": r["gzip_bytes"],
                    "plain_size": plain.get("size_bytes"), "plain_gzip": plain.get("gzip_bytes"),
                    "plain_int8": plain.get("accuracy"),
                    "gzip_ratio": round(r["gzip_bytes"] / plain["gzip_bytes"], 3)
                    if plain.get("gzip_bytes") else None,
                    "latency": r["host_latency_ms"], "fully_integer": r["fully_integer"],
                    "gate": r["gate"]["passed"], "recovery": (r.get("recovery") or {}).get(
                        "summary"), "wall_s": r["wall_s"]}
            elif key == "distill":
                out[f"{case}/distill"] = {k: r.get(k) for k in (
                    "teacher", "student", "label_only", "inherited_label_only", "wall_s")}
            elif key == "sweep":
                out[f"{case}/sweep"] = {"recommended": r["recommended"], "wall_s": r["wall_s"]}
    return out


if __name__ == "__main__":
    sys.exit(main())
