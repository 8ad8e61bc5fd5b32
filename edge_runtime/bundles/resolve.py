"""From a path on the board to a checked :class:`Bundle`: a directory, a pack or a bare model.

This is where a signature is verified, once: a directory here, a pack while it is unpacked
(:func:`edge_runtime.bundles.packing.unpack_bundle`). The bundle that comes out says who signed
it, and loading the model later trusts that instead of hashing every file again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.bundles.manifest import Bundle, BundleError, bare_model, load_bundle_dir, read_labels
from edge_runtime.bundles.packing import PackError, move_into_place, unpack_bundle
from edge_runtime.system.paths import default_state_dir

if TYPE_CHECKING:
    from edge_runtime.bundles.signing import Release

PACK_SUFFIXES = (".tar.gz", ".tgz")


@dataclass
class Hints:
    """How to read a bare ``.tflite`` (ignored for bundles, whose manifest says it all)."""

    labels: Path | None = None
    task: str | None = None
    input_mean: Any = None
    input_std: Any = None
    color: str | None = None
    resize: str | None = None
    decoder: str | None = None


def resolve_bundle(path: Path, *, state_dir: Path | None = None,
                   trusted_keys: Sequence[Path] = (), hints: Hints | None = None) -> Bundle:
    """Find and check the bundle at ``path`` (without loading the interpreter); BundleError."""
    path = Path(path)
    if trusted_keys and path.suffix == ".tflite":
        raise BundleError(f"{path}: a bare .tflite cannot be signed; with trusted keys only "
                          "signed bundles are loaded")
    if path.is_dir():
        return load_verified(path, trusted_keys)
    if path.name.endswith(PACK_SUFFIXES):
        return install_pack(path, state_dir or default_state_dir(), trusted_keys)
    if path.suffix == ".tflite":
        h = hints or Hints()
        labels = read_labels(h.labels) if h.labels else None
        return bare_model(path, labels=labels, task=h.task)
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist")
    raise BundleError(f"{path}: expected a bundle directory, a .tar.gz or a .tflite file")


def load_verified(bundle_dir: Path, trusted_keys: Sequence[Path]) -> Bundle:
    """A bundle directory, its signature checked against ``trusted_keys`` when any are given."""
    release = verify(bundle_dir, trusted_keys) if trusted_keys else None
    bundle = load_bundle_dir(bundle_dir)
    _mark_signed(bundle, release)
    return bundle


def verify(bundle_dir: Path, trusted_keys: Sequence[Path]) -> Release:
    """The release ``bundle_dir`` is, as its signature says; BundleError naming the problem."""
    # Imported here: cryptography costs start-up time a daemon without signing need not pay.
    from edge_runtime.bundles.signing import SignatureError, verify_release

    try:
        return verify_release(bundle_dir, trusted_keys)
    except SignatureError as exc:
        raise BundleError(f"{bundle_dir}: {exc}") from None


@contextlib.contextmanager
def staged_pack(archive: Path | bytes, state_dir: Path, trusted_keys: Sequence[Path],
                label: str, name: str | None = None) -> Iterator[Bundle]:
    """The pack unpacked (and its signature verified) in a folder of its own under
    ``STATE/incoming``; whatever is not moved out of it is removed on leaving."""
    incoming = state_dir / "incoming"
    try:
        incoming.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=incoming))
    except OSError as exc:
        raise BundleError(f"cannot stage a bundle in {incoming}: {exc.strerror or exc}") from None
    try:
        yield unpack_pack(archive, staging, trusted_keys, name=name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def install_pack(archive: Path, state_dir: Path, trusted_keys: Sequence[Path]) -> Bundle:
    """A pack unpacked and checked apart, under ``STATE/incoming``, and only then moved into
    ``STATE/bundles``: a bad pack never replaces the bundle installed under its name."""
    with staged_pack(archive, state_dir, trusted_keys, "start") as bundle:
        assert bundle.root is not None
        final = state_dir / "bundles" / bundle.root.name
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            move_into_place(bundle.root, final, bundle.root.parent)
        except (OSError, PackError) as exc:
            raise BundleError(f"{archive}: {exc}") from None
        return dataclasses.replace(bundle, root=final, model_path=final / bundle.model_path.name)


def unpack_pack(archive: Path | bytes, dest_root: Path, trusted_keys: Sequence[Path],
                name: str | None = None) -> Bundle:
    """Unpack a pack under ``dest_root`` (its signature checked on the way) and load it."""
    from edge_runtime.bundles.signing import SignatureError

    where = name or (archive if isinstance(archive, Path) else "archive")
    if isinstance(archive, Path) and not archive.is_file():
        raise BundleError(f"bundle {archive} does not exist")
    try:
        root, release = unpack_bundle(archive, dest_root, trusted_keys=trusted_keys)
    except (PackError, SignatureError) as exc:
        raise BundleError(f"{where}: {exc}") from None
    bundle = load_bundle_dir(root)
    _mark_signed(bundle, release)
    return bundle


def _mark_signed(bundle: Bundle, release: Release | None) -> None:
    if release is not None:
        bundle.signed_by = release.key_id
        bundle.sequence = release.sequence
        bundle.groups = release.groups
