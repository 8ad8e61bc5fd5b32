"""Bundles: the unit flashed onto a board (SPEC §3), and bare ``.tflite`` files described by flags.

``load_bundle`` checks everything that can be checked without running the model: the manifest
schema, the model's sha256, labels against the outputs. It never trusts a path inside a manifest,
and everything it reads is a regular file that resolves inside the bundle directory: a link to a
file elsewhere is refused. Manifests are bounded in size and depth (``jsonfile``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from edge_runtime.bundles.jsonfile import JsonLimitError, read_json
from edge_runtime.errors import EdgeError
from edge_runtime.postprocess import TASKS as TASKS  # the registry's list, re-exported
from edge_runtime.preprocess import InputSpec
from edge_runtime.yamlconfig import one_of

SCHEMA = "edge-bundle/1"
MANIFEST = "manifest.json"
LABELS = "labels.txt"
MAX_LABELS_BYTES = 4 * 2**20
TaskName = Annotated[str, AfterValidator(one_of("task", TASKS))]


class BundleError(EdgeError):
    """A bundle or model that cannot be used; the message is one line naming the problem."""


class Quantization(BaseModel):
    model_config = ConfigDict(extra="allow")
    scale: float = 0.0
    zero_point: int = 0


class InputSection(BaseModel):
    model_config = ConfigDict(extra="allow")
    shape: list[int]
    dtype: Literal["int8", "uint8", "float32", "float16"]
    layout: str = "NHWC"
    color: Literal["RGB", "BGR", "GRAY"] = "RGB"
    resize: Literal["stretch", "letterbox"] = "stretch"
    mean: float | list[float] = 0.0
    std: float | list[float] = 1.0
    quantization: Quantization = Field(default_factory=Quantization)


class OutputSection(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int]
    dtype: str
    quantization: Quantization = Field(default_factory=Quantization)


class Manifest(BaseModel):
    """The fields of ``manifest.json`` the daemon relies on; anything else is kept as it is."""

    model_config = ConfigDict(extra="allow")
    schema_: Literal["edge-bundle/1"] = Field(alias="schema")
    name: str
    version: str
    created: str
    task: TaskName
    model_file: str = "model.tflite"
    sha256: str
    profile: dict[str, Any] = Field(default_factory=dict)
    input: InputSection
    outputs: list[OutputSection]
    decoder: dict[str, Any] | None = None
    postprocess: dict[str, Any] = Field(default_factory=dict)
    sensor: dict[str, Any] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    calibration: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, Any] = Field(default_factory=dict)
    reference_stats: dict[str, Any] = Field(default_factory=dict)
    gate: dict[str, Any] = Field(default_factory=dict)


@dataclass
class Bundle:
    """A model ready to load: where it is, how to feed it and how to read its outputs."""

    model_path: Path
    manifest: Manifest | None
    labels: list[str]
    input_spec: InputSpec | None
    task: str
    name: str
    version: str
    sha256: str
    root: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)
    signed_by: str | None = None   # the trusted key id that verified it, once, when resolved
    sequence: int | None = None    # the signed release sequence (None: not signed)
    groups: tuple[str, ...] = ()   # the device groups it was signed for (none: any device)

    @property
    def model_info(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @property
    def profile(self) -> dict[str, Any]:
        return dict(self.manifest.profile) if self.manifest else {}

    def relocate(self, root: Path) -> None:
        """Its files were moved to ``root`` (kept once serving): read them from there on (a
        thread switch loads the model file again)."""
        self.model_path = root / self.model_path.name
        self.root = root


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_labels(path: Path) -> list[str]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_LABELS_BYTES + 1)
        if len(data) > MAX_LABELS_BYTES:
            raise BundleError(f"labels {path} are over the {MAX_LABELS_BYTES}-byte limit")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read labels {path}: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_manifest(path: Path) -> Manifest:
    try:
        data = read_json(path, f"{path}: manifest")
    except FileNotFoundError:
        raise BundleError(f"{path.parent}: no manifest.json (not a bundle)") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    except JsonLimitError as exc:
        raise BundleError(str(exc)) from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: manifest must be a JSON object")
    if data.get("schema") != SCHEMA:
        raise BundleError(f"{path}: unsupported manifest schema {str(data.get('schema'))[:40]!r} "
                          f"(expected {SCHEMA!r})")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise BundleError(f"{path}: manifest field {where!r}: {err['msg']}") from None


def inside(root: Path, name: str) -> Path | None:
    """``root/name`` when it is a regular file whose real path lies inside ``root`` (which is
    resolved already); None when it does not exist; BundleError when it leads elsewhere."""
    path = root / name
    if not path.exists() and not path.is_symlink():
        return None
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(root) or real == root:
        raise BundleError(f"{root}: {name} is a link to a file outside the bundle; refused")
    if not real.is_file():
        raise BundleError(f"{root}: {name} is not a regular file")
    return real


def load_bundle_dir(root: Path, *, check_sha: bool = True) -> Bundle:
    """Load and check a bundle directory (not yet the model itself)."""
    if not root.is_dir():
        raise BundleError(f"bundle {root} does not exist or is not a directory")
    root = Path(os.path.realpath(root))
    manifest_path = inside(root, MANIFEST)
    if manifest_path is None:
        raise BundleError(f"{root}: no manifest.json (not a bundle)")
    manifest = load_manifest(manifest_path)
    model_name = Path(manifest.model_file).name
    if model_name != manifest.model_file or model_name in ("", ".", ".."):
        raise BundleError(f"{root}: model_file {manifest.model_file!r} must be a plain file name")
    model_path = inside(root, model_name)
    if model_path is None:
        raise BundleError(f"{root}: model file {model_name} is missing")
    if check_sha:
        actual = sha256_file(model_path)
        if actual != manifest.sha256:
            raise BundleError(f"{root}: sha256 of {model_name} does not match the manifest "
                              "(modified or corrupt)")
    labels_path = inside(root, LABELS)
    labels = read_labels(labels_path) if labels_path is not None else []
    spec = InputSpec.from_manifest(manifest.input.model_dump())
    _check_labels(root, manifest, labels)
    params = dict(manifest.postprocess)
    if manifest.decoder:
        params.update(manifest.decoder)
    return Bundle(
        model_path=model_path, manifest=manifest, labels=labels, input_spec=spec,
        task=manifest.task, name=manifest.name, version=manifest.version,
        sha256=manifest.sha256, root=root, params=params,
    )


def _check_labels(root: Path, manifest: Manifest, labels: list[str]) -> None:
    if manifest.task != "classification" or not labels or not manifest.outputs:
        return
    classes = manifest.outputs[0].shape[-1]
    if classes != len(labels):
        raise BundleError(f"{root}: labels.txt has {len(labels)} labels but the model has "
                          f"{classes} classes")


def bare_model(path: Path, *, labels: list[str] | None = None, task: str | None = None,
               name: str | None = None) -> Bundle:
    """A ``.tflite`` with no manifest; the input spec is filled in from the model once loaded."""
    if not path.is_file():
        raise BundleError(f"model {path} does not exist")
    if task is not None and task not in TASKS:
        raise BundleError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return Bundle(
        model_path=path, manifest=None, labels=list(labels or []), input_spec=None,
        task=task or ("classification" if labels else "raw"), name=name or path.stem,
        version="0", sha256=sha256_file(path), root=None,
    )


def write_manifest(root: Path, data: dict[str, Any]) -> None:
    """Validate then write ``manifest.json`` (the converter's side of the contract)."""
    Manifest.model_validate(data)
    (root / MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n",
                                 encoding="utf-8")
