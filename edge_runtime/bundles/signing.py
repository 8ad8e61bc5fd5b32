"""Ed25519 signatures over a bundle directory.

A signed bundle carries ``signature.json``: the sha256 and size of every other file in the bundle,
a release ``sequence`` (a number that only grows from one release to the next, so that a device
can refuse an older release sent again) and the device ``groups`` it is meant for (none: any
device), with an ed25519 signature over the canonical JSON of all of that plus the signer's key
id. Verifying checks the signature first, then that the files are exactly the ones signed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeGuard

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_runtime.bundles.jsonfile import JsonLimitError, loads
from edge_runtime.bundles.manifest import sha256_file
from edge_runtime.errors import EdgeError

SIGNATURE_FILE = "signature.json"
SIGNATURE_SCHEMA = "edge-signature/2"
MAX_SIGNATURE_BYTES = 1 * 2**20
MAX_SEQUENCE = 2**63 - 1
ALGORITHM = "ed25519"
PRIVATE_KEY_NAME = "edge-signing.key"
PUBLIC_KEY_NAME = "edge-signing.pub"


class SignatureError(EdgeError):
    """A key or a bundle signature is missing, malformed or does not verify."""


@dataclass(frozen=True)
class Release:
    """What a verified signature vouches for: who signed, which release, for which devices,
    and the files (sha256 and size by POSIX path) the bundle holds."""

    key_id: str
    sequence: int
    groups: tuple[str, ...]
    files: dict[str, str]
    sizes: dict[str, int]


def generate_keypair(directory: Path) -> tuple[Path, Path]:
    """Write ``DIR/edge-signing.key`` (mode 0600) and ``DIR/edge-signing.pub``; never overwrite."""
    directory = Path(directory)
    private_path = directory / PRIVATE_KEY_NAME
    public_path = directory / PUBLIC_KEY_NAME
    for path in (private_path, public_path):
        if path.exists():
            raise SignatureError(f"{path} already exists; refusing to overwrite a signing key")
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new_file(private_path, private_pem, 0o600)
    _write_new_file(public_path, public_pem, 0o644)
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an unencrypted PEM ed25519 private key."""
    data = _read_key_file(path)
    if b"PUBLIC KEY" in data:
        raise SignatureError(f"{path} is a public key; signing needs the private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise SignatureError(f"{path} is encrypted; an unencrypted key is needed") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"{path} is not a PEM ed25519 private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} holds a {_key_kind(key)} key, not ed25519")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load a PEM ed25519 public key."""
    data = _read_key_file(path)
    if b"PRIVATE KEY" in data:
        raise SignatureError(f"{path} is a private key; pass the public key ({PUBLIC_KEY_NAME})")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"{path} is not a PEM ed25519 public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} holds a {_key_kind(key)} key, not ed25519")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint: the first 16 hex digits of the sha256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_bundle(bundle_dir: Path, private_key_path: Path, *, sequence: int | None = None,
                groups: Sequence[str] = ()) -> Path:
    """Write ``bundle_dir/signature.json`` covering every other file; return its path.

    ``sequence`` defaults to the time in milliseconds, and always to more than the sequence of
    a signature the bundle already had, so that each signing supersedes the one before.
    """
    bundle_dir = _require_dir(bundle_dir)
    private_key = load_private_key(private_key_path)
    if sequence is None:
        sequence = max(time.time_ns() // 1_000_000, _previous_sequence(bundle_dir) + 1)
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise SignatureError(f"sequence {sequence} must be between 0 and {MAX_SEQUENCE}")
    kid = key_id(private_key.public_key())
    files = hash_bundle_files(bundle_dir)
    sizes = {rel: (bundle_dir / rel).stat().st_size for rel in files}
    claims = {"sequence": sequence, "groups": sorted(set(groups))}
    signature = private_key.sign(_signed_payload(files, sizes, kid, claims))
    document = {
        "schema": SIGNATURE_SCHEMA,
        "algorithm": ALGORITHM,
        "key_id": kid,
        "files": files,
        "sizes": sizes,
        **claims,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    target = bundle_dir / SIGNATURE_FILE
    target.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target


def verify_bundle(bundle_dir: Path, trusted_keys: Sequence[Path]) -> str:
    """Check the bundle is unchanged and signed by one of ``trusted_keys``; return the key id."""
    return verify_release(bundle_dir, trusted_keys).key_id


def verify_release(bundle_dir: Path, trusted_keys: Sequence[Path]) -> Release:
    """The release a bundle directory is, its signature and every file checked."""
    bundle_dir = _require_dir(bundle_dir)
    release = verify_document(_read_signature(bundle_dir), trusted_keys)
    _compare_files(release.files, hash_bundle_files(bundle_dir))
    return release


def verify_document(data: bytes, trusted_keys: Sequence[Path]) -> Release:
    """The release ``signature.json`` (its bytes) vouches for, once its signature checks out;
    the files it lists are not looked at (a pack is checked against it before extraction)."""
    trusted = {key_id(key): key for key in (load_public_key(p) for p in trusted_keys)}
    if not trusted:
        raise SignatureError("no trusted keys given to verify the bundle against")
    try:
        document = loads(data, SIGNATURE_FILE, max_bytes=MAX_SIGNATURE_BYTES)
    except JsonLimitError as exc:
        raise SignatureError(str(exc)) from None
    kid, files, sizes, (sequence, groups), signature = _signature_fields(document)
    claims: dict[str, object] = {"sequence": sequence, "groups": groups}
    public_key = trusted.get(kid)
    if public_key is None:
        raise SignatureError(f"bundle signed by an untrusted key {kid}")
    try:
        public_key.verify(signature, _signed_payload(files, sizes, kid, claims))
    except InvalidSignature as exc:
        raise SignatureError("signature does not match") from exc
    return Release(kid, sequence, tuple(groups), files, sizes)


def hash_bundle_files(bundle_dir: Path) -> dict[str, str]:
    """sha256 of every regular file under the bundle except the signature, keyed by POSIX path."""
    return {rel: sha256_file(bundle_dir / rel) for rel in sorted(_bundle_files(bundle_dir))}


def _bundle_files(bundle_dir: Path) -> Iterator[str]:
    for root, dirs, names in os.walk(bundle_dir):
        dirs.sort()
        for name in [*dirs, *names]:
            path = Path(root, name)
            rel = path.relative_to(bundle_dir).as_posix()
            if path.is_symlink():
                raise SignatureError(f"bundle contains a symlink {rel}")
            if name in dirs:
                continue
            if not path.is_file():
                raise SignatureError(f"bundle contains a special file {rel}")
            if rel != SIGNATURE_FILE:
                yield rel


def _compare_files(signed: dict[str, str], actual: dict[str, str]) -> None:
    for rel in sorted(signed):
        if rel not in actual:
            raise SignatureError(f"file {rel} is missing")
        if actual[rel] != signed[rel]:
            raise SignatureError(f"file {rel} was modified")
    for rel in sorted(actual):
        if rel not in signed:
            raise SignatureError(f"unexpected file {rel}")


def _read_signature(bundle_dir: Path) -> bytes:
    path = bundle_dir / SIGNATURE_FILE
    if path.is_symlink() or not path.is_file():
        raise SignatureError("bundle is not signed")
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_SIGNATURE_BYTES + 1)
    except OSError as exc:
        raise SignatureError(f"{SIGNATURE_FILE} is not readable: {exc.strerror or exc}") from exc


def _previous_sequence(bundle_dir: Path) -> int:
    try:
        document = json.loads((bundle_dir / SIGNATURE_FILE).read_bytes()[:MAX_SIGNATURE_BYTES])
        value = document.get("sequence") if isinstance(document, dict) else None
    except (OSError, ValueError, RecursionError):
        return -1
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _signature_fields(document: object,
                      ) -> tuple[str, dict[str, str], dict[str, int], tuple[int, list[str]], bytes]:
    if isinstance(document, dict) and document.get("schema") == "edge-signature/1":
        raise SignatureError(f"{SIGNATURE_FILE} is from an older edge-convert and names no "
                             "release sequence; sign the bundle again")
    if not isinstance(document, dict) or document.get("schema") != SIGNATURE_SCHEMA:
        raise SignatureError(f"{SIGNATURE_FILE} is not an {SIGNATURE_SCHEMA} document")
    if document.get("algorithm") != ALGORITHM:
        raise SignatureError(f"unsupported signature algorithm {document.get('algorithm')!r}")
    kid, files, encoded = document.get("key_id"), document.get("files"), document.get("signature")
    sizes = document.get("sizes")
    if not isinstance(kid, str) or not isinstance(encoded, str) or not _is_file_table(files) \
            or not _is_size_table(sizes, files):
        raise SignatureError(f"{SIGNATURE_FILE} is missing key_id, files, sizes or signature")
    sequence, groups = document.get("sequence"), document.get("groups")
    if not isinstance(sequence, int) or isinstance(sequence, bool) \
            or not 0 <= sequence <= MAX_SEQUENCE:
        raise SignatureError(f"{SIGNATURE_FILE} has no valid release sequence")
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise SignatureError(f"{SIGNATURE_FILE} 'groups' must be a list of group names")
    try:
        signature = base64.b64decode(encoded, validate=True)
    except ValueError as exc:
        raise SignatureError(f"{SIGNATURE_FILE} has a signature that is not base64") from exc
    return kid, files, sizes, (sequence, groups), signature


def _is_size_table(sizes: object, files: dict[str, str]) -> TypeGuard[dict[str, int]]:
    return isinstance(sizes, dict) and set(sizes) == set(files) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sizes.values())


def _is_file_table(files: object) -> TypeGuard[dict[str, str]]:
    if not isinstance(files, dict):
        return False
    return all(isinstance(k, str) and isinstance(v, str) and _is_safe(k) for k, v in files.items())


def _is_safe(rel: str) -> bool:
    path = PurePosixPath(rel)
    return bool(rel) and not path.is_absolute() and ".." not in path.parts


def _signed_payload(files: dict[str, str], sizes: dict[str, int], kid: str,
                    claims: dict[str, object]) -> bytes:
    canonical = json.dumps(
        {"files": files, "sizes": sizes, "key_id": kid, **claims},
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    )
    return canonical.encode("ascii")


def _read_key_file(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read key {path}: {exc.strerror or exc}") from exc


def _key_kind(key: object) -> str:
    return type(key).__name__.lstrip("_").replace("PrivateKey", "").replace("PublicKey", "")


def _require_dir(bundle_dir: Path) -> Path:
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise SignatureError(f"{bundle_dir} is not a bundle directory")
    return bundle_dir


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL makes the no-overwrite promise hold even if two keygens race.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.fchmod(fd, mode)  # the umask must not widen or narrow what was asked for
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
