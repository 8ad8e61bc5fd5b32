"""Device profiles: one YAML file per board, validated before any conversion work starts.

A profile says what a board is (arch, cores, RAM, accelerator) and what the converter must produce
for it (quantization, I/O dtype, delegate, op constraints, size and latency budgets, the oldest
runtime that must load the model). Shipped profiles live in ``device_profiles/``; a user can point
``--profile`` at a file of their own. Errors name the file, the key and its line.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from converters.errors import ConvertError
from edge_runtime.yamlconfig import describe_errors, did_you_mean, parse_yaml

ENV_PROFILES_DIR = "EDGE_PROFILES_DIR"
DELEGATE_NAMES = ("xnnpack", "edgetpu", "gpu", "none")
PROFILE_SUFFIXES = (".yaml", ".yml")
_LIBRARY = re.compile(r".+\.(so(\.\d+)*|dylib|dll)$")
_RUNTIME = re.compile(r"^(ai-edge-litert|tflite-runtime|tensorflow) (\d+(?:\.\d+){1,2})$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_OP_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_RULE = "profile_rule"


class ProfileError(ConvertError):
    """A profile that cannot be found, read or validated."""


class _Strict(BaseModel):
    # strict: YAML `threads: yes` or `cores: "4"` is a mistake to report, not to coerce
    model_config = ConfigDict(extra="forbid", strict=True)


class Constraints(_Strict):
    """What the target can execute; the converter checks the model against it."""

    int8_only: bool = Field(
        default=False,
        description="Every op must run in 8-bit integer arithmetic (no float ops at all).",
    )
    static_shapes: bool = Field(
        default=False,
        description="Every tensor shape is fixed at conversion time (no -1 dimensions).",
    )
    batch_one: bool = Field(
        default=False, description="The model input's batch dimension must be 1.")
    allowed_ops: list[str] | None = Field(
        default=None,
        description="TFLite builtin op names the target can run (e.g. CONV_2D); null: any op.",
    )
    allow_float_fallback: bool = Field(
        default=True, description="Ops that cannot be quantized may stay float instead of failing.")

    @field_validator("allowed_ops")
    @classmethod
    def _op_names(cls, ops: list[str] | None) -> list[str] | None:
        if ops is None:
            return None
        names = [op.strip().upper() for op in ops]
        bad = [op for op in names if not _OP_NAME.match(op)]
        if bad:
            raise ValueError(f"not a TFLite op name: {bad[0]!r} (expected e.g. CONV_2D)")
        if not names:
            raise ValueError("allowed_ops is empty; leave it out (null) to allow any op")
        return list(dict.fromkeys(names))

    @model_validator(mode="after")
    def _consistent(self) -> Constraints:
        if self.int8_only and self.allow_float_fallback:
            raise PydanticCustomError(_RULE, "{message}", {
                "key": "allow_float_fallback",
                "message": "int8_only forbids float ops: set allow_float_fallback: false",
            })
        return self


class Budgets(_Strict):
    """Limits a converted model must stay within on this board."""

    max_size_bytes: int | None = Field(
        default=None, gt=0, description="Largest acceptable model.tflite in bytes; null: no limit.")
    max_latency_ms: float | None = Field(
        default=None,
        gt=0,
        description="Device latency budget per inference in ms, used by the daemon's health "
                    "check; null: no limit.",
    )


class Profile(_Strict):
    """One target board and what the converter must produce for it."""

    name: str = Field(description="Identifier used by --profile and in bundle names, e.g. rpi4.")
    description: str = Field(description="What the board is and why these settings were chosen.")
    arch: Literal["aarch64", "armv7l", "x86_64"] = Field(
        description="CPU architecture as `uname -m` reports it.")
    cores: int = Field(ge=1, description="CPU cores.")
    ram_mb: int = Field(ge=64, description="RAM in MB.")
    accelerator: Literal["none", "edgetpu", "gpu"] = Field(
        description="Inference accelerator on the board, if any.")
    quantization: Literal["int8", "float16", "dynamic", "float32"] = Field(
        description="int8: full-integer; float16: float16 weights; dynamic: int8 weights with "
                    "float activations; float32: no quantization.")
    io_dtype: Literal["int8", "uint8", "float32"] = Field(
        description="dtype of the model's input and output tensors.")
    threads: int = Field(ge=1, le=256, description="CPU threads the interpreter uses.")
    delegate: str = Field(
        description="xnnpack, edgetpu, gpu, none, or a path to an external delegate library.")
    constraints: Constraints = Field(
        default_factory=lambda: Constraints(), description="What the target can execute.")
    budgets: Budgets = Field(
        default_factory=lambda: Budgets(), description="Size and latency limits.")
    video_decoder: Literal["software", "v4l2m2m", "nvv4l2"] = Field(
        default="software",
        description="H.264 decoder the daemon uses on this board under `decode: auto`: v4l2m2m "
                    "(Raspberry Pi's V4L2 memory-to-memory decoder), nvv4l2 (Jetson's NVDEC "
                    "through GStreamer), or software; it falls back to software when absent.")
    min_runtime: str = Field(
        description="Oldest runtime the model must load on, e.g. 'tflite-runtime 2.14' or "
                    "'ai-edge-litert 1.2'.")
    source: str = Field(
        default="",
        description="File the profile was loaded from (set by the loader; ignored by ==).",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(
                f"{name!r} is not a valid profile name (lower-case letters, digits, '.', '_', '-')")
        return name

    @field_validator("delegate")
    @classmethod
    def _valid_delegate(cls, delegate: str) -> str:
        if delegate in DELEGATE_NAMES or _LIBRARY.match(delegate):
            return delegate
        names = ", ".join(DELEGATE_NAMES)
        raise ValueError(f"unknown delegate {delegate!r}{did_you_mean(delegate, DELEGATE_NAMES)}; "
                         f"expected one of {names} or a path to a delegate library (.so)")

    @field_validator("min_runtime")
    @classmethod
    def _valid_runtime(cls, runtime: str) -> str:
        if not _RUNTIME.match(runtime):
            raise ValueError(f"{runtime!r} is not a runtime requirement; expected e.g. "
                             "'tflite-runtime 2.14' or 'ai-edge-litert 1.2'")
        return runtime

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        for key, message in _rule_problems(self):
            raise PydanticCustomError(_RULE, "{message}", {"key": key, "message": message})
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Profile):
            return NotImplemented
        return self.model_dump(exclude={"source"}) == other.model_dump(exclude={"source"})

    @property
    def runtime_requirement(self) -> tuple[str, tuple[int, ...]]:
        """``min_runtime`` split up, e.g. ``("tflite-runtime", (2, 14))``."""
        match = _RUNTIME.match(self.min_runtime)
        assert match is not None  # validated on construction
        return match.group(1), tuple(int(part) for part in match.group(2).split("."))

    def settings(self) -> dict[str, Any]:
        """What a bundle manifest records under ``profile``: the name and every setting used."""
        return self.model_dump(mode="json", exclude={"source", "description"})


def _rule_problems(profile: Profile) -> Iterator[tuple[str, str]]:
    """Cross-field rules, as (dotted key to blame, message)."""
    if profile.quantization != "int8" and profile.io_dtype != "float32":
        yield "io_dtype", (f"io_dtype {profile.io_dtype} needs quantization int8 "
                           f"(a {profile.quantization} model has float32 input and output)")
    if profile.constraints.int8_only and profile.quantization != "int8":
        yield "constraints.int8_only", "int8_only needs quantization int8"
    if profile.accelerator == "edgetpu":
        yield from _edgetpu_problems(profile)
    if profile.delegate in ("edgetpu", "gpu") and profile.accelerator != profile.delegate:
        yield "delegate", f"delegate {profile.delegate} needs accelerator {profile.delegate}"


def _edgetpu_problems(profile: Profile) -> Iterator[tuple[str, str]]:
    if profile.quantization != "int8":
        yield "quantization", "the Edge TPU runs only int8 models: set quantization: int8"
    constraints = profile.constraints
    for key in ("int8_only", "static_shapes", "batch_one"):
        if not getattr(constraints, key):
            yield f"constraints.{key}", f"the Edge TPU needs constraints.{key}: true"
    if not constraints.allowed_ops:
        yield "constraints.allowed_ops", "the Edge TPU needs its supported op list in allowed_ops"
    if profile.delegate != "edgetpu" and not _LIBRARY.match(profile.delegate):
        yield "delegate", "the Edge TPU needs delegate edgetpu (or a path to libedgetpu)"


# --- finding and loading -------------------------------------------------------------------------


def profiles_dir() -> Path:
    """Where named profiles live: $EDGE_PROFILES_DIR, the source tree, or the installed data."""
    env = os.environ.get(ENV_PROFILES_DIR)
    if env:
        return Path(env).expanduser()
    in_tree = Path(__file__).resolve().parents[1] / "device_profiles"
    if in_tree.is_dir():
        return in_tree
    return Path(sys.prefix) / "share" / "edge-runtime" / "device_profiles"


def list_profiles() -> list[Profile]:
    """Every profile in :func:`profiles_dir`, sorted by name."""
    return sorted((_load_named_file(path) for path in _profile_files()), key=lambda p: p.name)


def load_profile(name_or_path: str | Path) -> Profile:
    """A profile by name (from :func:`profiles_dir`) or from a user's YAML file."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or _looks_like_path(text):
        return load_profile_file(Path(text).expanduser())
    files = {path.stem: path for path in _profile_files()}
    if text not in files:
        names = sorted(files)
        raise ProfileError(f"unknown profile {text!r}{did_you_mean(text, names)}; "
                           f"available: {', '.join(names)}")
    return _load_named_file(files[text])


def load_profile_file(path: Path) -> Profile:
    """Read and validate one profile file; ``name`` defaults to the file's stem."""
    root, data = parse_yaml(path, what="profile", error=ProfileError, example="`arch: aarch64`",
                            duplicates=True)
    data.setdefault("name", path.stem)
    data["source"] = str(path)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(describe_errors(str(path), root, exc, Profile, hidden=("source",))) \
            from None


def _looks_like_path(text: str) -> bool:
    return text.endswith(PROFILE_SUFFIXES) or "/" in text or os.sep in text


def _profile_files() -> list[Path]:
    directory = profiles_dir()
    if not directory.is_dir():
        raise ProfileError(f"profiles directory not found: {directory} (set {ENV_PROFILES_DIR})")
    return sorted(p for p in directory.iterdir() if p.suffix in PROFILE_SUFFIXES and p.is_file())


def _load_named_file(path: Path) -> Profile:
    profile = load_profile_file(path)
    if profile.name != path.stem:
        # a name lookup goes by file name, so the two must agree
        raise ProfileError(f"{path}: name {profile.name!r} does not match the file name; "
                           f"rename the file to {profile.name}{path.suffix} or fix the name")
    return profile


# --- presentation --------------------------------------------------------------------------------

_COLUMNS = ("NAME", "ARCH", "CORES", "RAM", "ACCEL", "QUANT", "I/O", "THREADS", "DELEGATE",
            "MAX SIZE", "MAX LATENCY", "MIN RUNTIME")


def profiles_table(profiles: Iterable[Profile]) -> str:
    """A fixed-width table, one profile per row, for ``edge-convert profiles``."""
    rows = [_COLUMNS, *(_row(profile) for profile in profiles)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _row(profile: Profile) -> tuple[str, ...]:
    budgets = profile.budgets
    return (
        profile.name, profile.arch, str(profile.cores), _ram(profile.ram_mb), profile.accelerator,
        profile.quantization, profile.io_dtype, str(profile.threads),
        Path(profile.delegate).name,
        _size(budgets.max_size_bytes) if budgets.max_size_bytes else "-",
        f"{budgets.max_latency_ms:g} ms" if budgets.max_latency_ms else "-",
        profile.min_runtime,
    )


def _ram(mb: int) -> str:
    return f"{mb // 1024} GB" if mb % 1024 == 0 else f"{mb} MB"


def _size(size: int) -> str:
    for unit, factor in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:g} {unit}"
    return f"{size} B"
