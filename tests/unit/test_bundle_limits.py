"""What the device reads from a bundle: bounded JSON, files that stay inside the bundle, signed
releases with a sequence and groups, and a ledger that refuses older releases (no TensorFlow)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.bundles.jsonfile import JsonLimitError, loads, nesting_depth
from edge_runtime.bundles.manifest import BundleError, load_bundle_dir, load_manifest
from edge_runtime.bundles.packing import pack_bundle
from edge_runtime.bundles.releases import ReleaseLedger
from edge_runtime.bundles.signing import (
    SignatureError,
    generate_keypair,
    sign_bundle,
    verify_release,
)

MODEL = b"TFL3" + bytes(range(200))
MANIFEST = {
    "schema": "edge-bundle/1", "name": "digits", "version": "1", "created": "2025-01-01T00:00:00",
    "task": "classification", "sha256": hashlib.sha256(MODEL).hexdigest(),
    "input": {"shape": [1, 8, 8, 1], "dtype": "int8", "color": "GRAY"},
    "outputs": [{"name": "out", "shape": [1, 2], "dtype": "int8"}],
}


def make_bundle(root: Path, name: str = "digits-rpi4") -> Path:
    bundle = root / name
    bundle.mkdir(parents=True)
    (bundle / "model.tflite").write_bytes(MODEL)
    (bundle / "labels.txt").write_text("zero\none\n")
    (bundle / "manifest.json").write_text(json.dumps(MANIFEST))
    return bundle


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys")


# ----- bounded JSON --------------------------------------------------------------------------


def test_depth_is_counted_without_recursion_and_strings_are_skipped() -> None:
    assert nesting_depth(b"[" * 200_000 + b"]" * 200_000) == 200_000
    assert nesting_depth(json.dumps({"a[{": ["\\\"[", {"b": "]]}"}]}).encode()) == 3


@pytest.mark.parametrize(("data", "words"), [
    (b"[" * 200_000 + b"]" * 200_000, "nested more than 64 levels"),
    (b'"' + b"x" * (5 * 2**20) + b'"', "byte limit"),
    (b"{not json", "not valid JSON"),
])
def test_json_over_the_limits_is_one_line(data: bytes, words: str) -> None:
    with pytest.raises(JsonLimitError, match=words):
        loads(data, "manifest")


def test_a_deep_manifest_is_a_bundle_error(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    (bundle / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(BundleError, match=r"manifest is nested more than"):
        load_manifest(bundle / "manifest.json")


# ----- files stay inside the bundle ----------------------------------------------------------


@pytest.mark.parametrize("name", ["labels.txt", "model.tflite", "manifest.json"])
def test_a_link_to_a_file_outside_the_bundle_is_refused(tmp_path: Path, name: str) -> None:
    bundle = make_bundle(tmp_path / "roots")
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    outside.write_bytes((bundle / name).read_bytes())
    (bundle / name).unlink()
    (bundle / name).symlink_to(outside)
    with pytest.raises(BundleError, match=rf"{name} is a link to a file outside the bundle"):
        load_bundle_dir(bundle)


def test_a_link_that_stays_inside_the_bundle_is_fine(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    (bundle / "labels-v1.txt").write_text("zero\none\n")
    (bundle / "labels.txt").unlink()
    (bundle / "labels.txt").symlink_to("labels-v1.txt")
    assert load_bundle_dir(bundle).labels == ["zero", "one"]


# ----- signed releases -----------------------------------------------------------------------


def test_sequence_and_groups_are_signed(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = make_bundle(tmp_path)
    signature = sign_bundle(bundle, keys[0], sequence=7, groups=["lab", "kitchen"])
    release = verify_release(bundle, [keys[1]])
    assert (release.sequence, release.groups) == (7, ("kitchen", "lab"))
    document = json.loads(signature.read_text())
    document["sequence"] = 10**9
    signature.write_text(json.dumps(document))
    with pytest.raises(SignatureError, match=r"^signature does not match$"):
        verify_release(bundle, [keys[1]])


def test_resigning_always_gives_a_higher_sequence(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = make_bundle(tmp_path)
    sign_bundle(bundle, keys[0], sequence=2**62)
    sign_bundle(bundle, keys[0])
    assert verify_release(bundle, [keys[1]]).sequence == 2**62 + 1


def test_a_signature_without_a_sequence_is_refused(tmp_path: Path,
                                                   keys: tuple[Path, Path]) -> None:
    bundle = make_bundle(tmp_path)
    signature = sign_bundle(bundle, keys[0])
    document = json.loads(signature.read_text())
    document["schema"] = "edge-signature/1"
    signature.write_text(json.dumps(document))
    with pytest.raises(SignatureError, match=r"names no release sequence; sign the bundle again"):
        verify_release(bundle, [keys[1]])


def test_the_ledger_refuses_older_releases_and_foreign_groups(tmp_path: Path,
                                                              keys: tuple[Path, Path]) -> None:
    from edge_runtime.bundles.resolve import load_verified

    def signed(name: str, sequence: int, groups: tuple[str, ...] = ()) -> object:
        bundle = make_bundle(tmp_path / "b", name)
        sign_bundle(bundle, keys[0], sequence=sequence, groups=groups)
        return load_verified(bundle, [keys[1]])

    ledger = ReleaseLedger(tmp_path / "state", groups=["kitchen"])
    new, old = signed("new", 20), signed("old", 10)
    ledger.admit(new, "default")  # type: ignore[arg-type]
    ledger.record(new, "default")  # type: ignore[arg-type]
    again = ReleaseLedger(tmp_path / "state", groups=["kitchen"])  # after a restart
    with pytest.raises(BundleError, match=r"older release \(sequence 10\).*\(20\); use rollback"):
        again.admit(old, "default")  # type: ignore[arg-type]
    again.admit(old, "other")  # type: ignore[arg-type]  # per pipeline
    with pytest.raises(BundleError, match=r"signed for group\(s\) lab; this device is in: kitchen"):
        again.admit(signed("lab", 30, ("lab",)), "default")  # type: ignore[arg-type]
    again.admit(signed("kitchen", 30, ("kitchen", "lab")), "default")  # type: ignore[arg-type]


# ----- a pack's signature is checked before anything is written ------------------------------

# A child process whose files may not grow past 64 KiB: extracting the big model before the
# signature check would fail with "File too large" instead of the signature's own error.
_UNPACK_SMALL = """
import resource, signal, sys
from pathlib import Path
from edge_runtime.bundles.packing import unpack_bundle
from edge_runtime.errors import EdgeError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
try:
    unpack_bundle(Path(sys.argv[1]), Path(sys.argv[2]), trusted_keys=[Path(sys.argv[3])])
except EdgeError as exc:
    print(exc)
"""


def unpack_small(archive: Path, dest: Path, public: Path) -> str:
    done = subprocess.run([sys.executable, "-c", _UNPACK_SMALL, str(archive), str(dest),
                           str(public)], capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.strip() + done.stderr.strip()


def test_an_unsigned_pack_is_refused_before_it_is_extracted(tmp_path: Path,
                                                            keys: tuple[Path, Path]) -> None:
    bundle = make_bundle(tmp_path / "work")
    (bundle / "model.tflite").write_bytes(b"\0" * (4 * 2**20))
    assert unpack_small(pack_bundle(bundle), tmp_path / "dest", keys[1]) == "bundle is not signed"


def test_a_signed_pack_with_a_grown_file_is_refused_before_it_is_extracted(
        tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = make_bundle(tmp_path / "work")
    sign_bundle(bundle, keys[0])
    (bundle / "model.tflite").write_bytes(b"\0" * (4 * 2**20))
    archive = pack_bundle(bundle)
    assert unpack_small(archive, tmp_path / "dest", keys[1]) == "file model.tflite was modified"
