"""Pack a bundle directory into ``<name>.tar.gz`` and unpack one safely on the device.

Packing is deterministic (sorted members, fixed owners, modes and times) so the same bundle
always gives the same bytes. Unpacking treats the archive as hostile: every member is checked
before anything touches the disk, and the result appears under ``dest_root`` only once complete.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from edge_runtime.errors import EdgeError

if TYPE_CHECKING:
    from edge_runtime.bundles.signing import Release

ARCHIVE_SUFFIX = ".tar.gz"
MANIFEST_FILE = "manifest.json"
DEFAULT_MAX_BYTES = 512 * 2**20
MAX_MEMBERS = 10_000
_CORRUPT = (tarfile.TarError, EOFError, zlib.error)
_FILE_MODE = 0o644
_DIR_MODE = 0o755


class PackError(EdgeError):
    """A bundle cannot be packed, or an archive is unsafe, corrupt or not a bundle."""


def pack_bundle(bundle_dir: Path, sign_key: Path | None = None, out: Path | None = None, *,
                sequence: int | None = None, groups: Sequence[str] = ()) -> Path:
    """Write ``<bundle>.tar.gz`` (beside the bundle unless ``out`` says where), signing first
    (as release ``sequence``, for the device ``groups``; see ``signing.sign_bundle``)."""
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / MANIFEST_FILE).is_file():
        raise PackError(f"{bundle_dir} is not a bundle directory (no {MANIFEST_FILE})")
    if sign_key is not None:
        # Imported here: cryptography costs start-up time a daemon without signing need not pay.
        from edge_runtime.bundles.signing import SignatureError, sign_bundle

        try:
            sign_bundle(bundle_dir, sign_key, sequence=sequence, groups=groups)
        except SignatureError as exc:
            raise PackError(str(exc)) from exc
    target = _archive_path(bundle_dir, out)
    entries = list(_pack_entries(bundle_dir))
    try:
        _write_atomically(target, lambda handle: _write_archive(handle, entries))
    except OSError as exc:
        raise PackError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


def unpack_bundle(
    archive: Path | bytes,
    dest_root: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    trusted_keys: Sequence[Path] = (),
) -> tuple[Path, Release | None]:
    """Extract a packed bundle under ``dest_root``; return its directory and the signed release.

    The archive must hold exactly one top-level directory of regular files. With
    ``trusted_keys``, its ``signature.json`` is read from the archive and verified first, and
    the archive must list exactly the files it signed, at their signed sizes, before a byte is
    written (raising ``SignatureError``); the files' hashes are checked once extracted. It is
    extracted into a fresh temporary directory and only then renamed into place, replacing an
    older copy.
    """
    dest_root = Path(dest_root)
    try:
        dest_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest_root))
    except OSError as exc:
        raise PackError(f"cannot unpack into {dest_root}: {exc.strerror or exc}") from exc
    try:
        with _open_archive(archive) as tar:
            members, top = _checked_layout(tar, max_bytes)
            release = _signed_release(tar, members, top, trusted_keys) if trusted_keys else None
            for member in members:
                _extract_member(tar, member, staging)
        bundle = staging / top
        if not (bundle / MANIFEST_FILE).is_file():
            raise PackError(f"archive holds no {top}/{MANIFEST_FILE}; not a bundle")
        if trusted_keys:
            from edge_runtime.bundles.signing import verify_release

            release = verify_release(bundle, trusted_keys)
        return move_into_place(bundle, dest_root / top, staging), release
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _signed_release(tar: tarfile.TarFile, members: list[tarfile.TarInfo], top: str,
                    trusted_keys: Sequence[Path]) -> Release:
    """The release the archive's signature vouches for, checked against the member list."""
    from edge_runtime.bundles.signing import (
        MAX_SIGNATURE_BYTES,
        SIGNATURE_FILE,
        SignatureError,
        verify_document,
    )

    files = {_relative(m.name, top): m for m in members if m.isfile()}
    entry = files.pop(SIGNATURE_FILE, None)
    if entry is None:
        raise SignatureError("bundle is not signed")
    if entry.size > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{SIGNATURE_FILE} is over the {MAX_SIGNATURE_BYTES}-byte limit")
    source = tar.extractfile(entry)
    if source is None:
        raise PackError(f"archive member {entry.name} cannot be read")
    try:
        with source:
            release = verify_document(source.read(MAX_SIGNATURE_BYTES + 1), trusted_keys)
    except (*_CORRUPT, OSError) as exc:
        raise PackError(f"archive is corrupt: {exc}") from exc
    for rel in sorted(files):
        if rel not in release.files:
            raise SignatureError(f"unexpected file {rel}")
        if files[rel].size != release.sizes[rel]:
            raise SignatureError(f"file {rel} was modified")
    for rel in sorted(release.files):
        if rel not in files:
            raise SignatureError(f"file {rel} is missing")
    return release


def _relative(name: str, top: str) -> str:
    parts = PurePosixPath(name).parts
    return PurePosixPath(*parts[1:]).as_posix() if parts and parts[0] == top else name


def _archive_path(bundle_dir: Path, out: Path | None) -> Path:
    name = bundle_dir.resolve().name + ARCHIVE_SUFFIX
    if out is None:
        return bundle_dir.resolve().parent / name
    out = Path(out)
    return out / name if out.is_dir() else out


def _pack_entries(bundle_dir: Path) -> Iterator[tuple[Path, str]]:
    top = bundle_dir.resolve().name
    yield bundle_dir, top
    for root, dirs, names in os.walk(bundle_dir):
        dirs.sort()
        for name in sorted([*dirs, *names]):
            path = Path(root, name)
            arcname = f"{top}/{path.relative_to(bundle_dir).as_posix()}"
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                raise PackError(f"bundle holds {arcname}, which is not a regular file")
            yield path, arcname


def _write_archive(handle: BinaryIO, entries: list[tuple[Path, str]]) -> None:
    # Fixed gzip and tar metadata so that packing twice gives identical bytes.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path, arcname in entries:
            info = tar.gettarinfo(str(path), arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = _DIR_MODE if info.isdir() else _FILE_MODE
            if info.isdir():
                tar.addfile(info)
            else:
                with path.open("rb") as source:
                    tar.addfile(info, source)


def _write_atomically(target: Path, write: Callable[[BinaryIO], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _open_archive(archive: Path | bytes) -> tarfile.TarFile:
    source = "archive" if isinstance(archive, bytes) else f"archive {archive}"
    try:
        if isinstance(archive, bytes):
            return tarfile.open(fileobj=io.BytesIO(archive), mode="r:*")
        return tarfile.open(Path(archive), mode="r:*")
    except FileNotFoundError as exc:
        raise PackError(f"{source} does not exist") from exc
    except _CORRUPT as exc:
        raise PackError(f"{source} is corrupt or not a tar.gz: {exc}") from exc
    except OSError as exc:
        raise PackError(f"cannot read {source}: {exc.strerror or exc}") from exc


def _checked_layout(tar: tarfile.TarFile, max_bytes: int) -> tuple[list[tarfile.TarInfo], str]:
    """Every member checked, nothing extracted; the members and the one top-level directory."""
    members = _checked_members(tar, max_bytes)
    tops = {PurePosixPath(m.name).parts[0] for m in members}
    if len(tops) != 1:
        raise PackError("archive must hold exactly one top-level bundle directory")
    top = tops.pop()
    if any(PurePosixPath(m.name).parts == (top,) and not m.isdir() for m in members):
        raise PackError(f"archive top-level entry {top} is not a directory")
    return members, top


def _checked_members(tar: tarfile.TarFile, max_bytes: int) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    total = 0
    try:
        for member in tar:
            if _check_member(member):
                members.append(member)
            total += member.size
            if total > max_bytes:
                raise PackError(f"archive expands to more than {max_bytes} bytes; refused")
            if len(members) > MAX_MEMBERS:
                raise PackError(f"archive has more than {MAX_MEMBERS} members; refused")
    except (*_CORRUPT, OSError) as exc:
        raise PackError(f"archive is corrupt: {exc}") from exc
    if not members:
        raise PackError("archive is empty")
    return members


def _check_member(member: tarfile.TarInfo) -> bool:
    """Refuse unsafe members; return False for a harmless "./" entry that is skipped."""
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute():
        raise PackError(f"archive member {name} has an absolute path; refused")
    if ".." in path.parts:
        raise PackError(f"archive member {name} escapes the bundle; refused")
    if not (member.isfile() or member.isdir()):
        raise PackError(f"archive member {name} is a {_kind(member)}; refused")
    return bool(path.parts) or not member.isdir()


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hard link"
    if member.isfifo():
        return "FIFO"
    if member.isdev():
        return "device"
    return "special file"


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path) -> None:
    target = staging.joinpath(*PurePosixPath(member.name).parts)
    try:
        if member.isdir():
            target.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            return
        target.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        _copy_member(tar, member, target)
    except FileExistsError as exc:
        raise PackError(f"archive lists {member.name} more than once; refused") from exc
    except (*_CORRUPT, OSError) as exc:
        raise PackError(f"cannot extract {member.name}: {exc}") from exc


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = tar.extractfile(member)
    if source is None:
        raise PackError(f"archive member {member.name} cannot be read")
    with source, target.open("xb") as sink:
        shutil.copyfileobj(source, sink)
    target.chmod(_FILE_MODE)


def move_into_place(bundle: Path, final: Path, staging: Path) -> Path:
    # A directory cannot be swapped atomically; park the old copy inside the staging area so the
    # cleanup removes it, and the gap without a bundle lasts two renames.
    parked = staging / f"{final.name}.previous"
    try:
        if final.exists() or final.is_symlink():
            os.rename(final, parked)
        os.rename(bundle, final)
    except OSError as exc:
        if parked.exists() and not final.exists():
            os.rename(parked, final)
        raise PackError(f"cannot install bundle into {final}: {exc.strerror or exc}") from exc
    return final


