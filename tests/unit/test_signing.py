from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge_runtime.bundles.signing import (
    SignatureError,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_bundle,
    verify_bundle,
)


def make_bundle(root: Path, name: str = "digits-rpi4") -> Path:
    bundle = root / name
    bundle.mkdir()
    model = b"TFL3" + bytes(range(200))
    (bundle / "model.tflite").write_bytes(model)
    (bundle / "labels.txt").write_text("zero\none\n")
    manifest = {"schema": "edge-bundle/1", "sha256": hashlib.sha256(model).hexdigest()}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "report.html").write_text("<html></html>")
    (bundle / "report.json").write_text("{}")
    return bundle


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys")


@pytest.fixture
def other_keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "other")


def test_keypair_files_are_pem_and_private_key_is_owner_only(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert private.name == "edge-signing.key" and public.name == "edge-signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert load_private_key(private).public_key() == load_public_key(public)


def test_keygen_refuses_to_overwrite(keys: tuple[Path, Path]) -> None:
    private, _ = keys
    before = private.read_bytes()
    with pytest.raises(SignatureError, match=r"already exists"):
        generate_keypair(private.parent)
    assert private.read_bytes() == before


def test_key_id_is_short_hex_and_differs_between_keys(
    keys: tuple[Path, Path], other_keys: tuple[Path, Path]
) -> None:
    first, second = key_id(load_public_key(keys[1])), key_id(load_public_key(other_keys[1]))
    assert len(first) == 16 and int(first, 16) >= 0
    assert first != second


def test_sign_then_verify_returns_the_signer(bundle: Path, keys: tuple[Path, Path]) -> None:
    sign_bundle(bundle, keys[0])
    assert verify_bundle(bundle, [keys[1]]) == key_id(load_public_key(keys[1]))


def test_signature_document_lists_every_other_file(bundle: Path, keys: tuple[Path, Path]) -> None:
    (bundle / "extra").mkdir()
    (bundle / "extra" / "anchors.npy").write_bytes(b"\x00" * 8)
    document = json.loads(sign_bundle(bundle, keys[0]).read_text())
    assert document["schema"] == "edge-signature/2"
    assert document["algorithm"] == "ed25519"
    assert set(document["files"]) == {
        "model.tflite", "labels.txt", "manifest.json", "report.html", "report.json",
        "extra/anchors.npy",
    }
    model_hash = hashlib.sha256((bundle / "model.tflite").read_bytes()).hexdigest()
    assert document["files"]["model.tflite"] == model_hash


def test_one_of_several_trusted_keys_is_enough(
    bundle: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path]
) -> None:
    sign_bundle(bundle, other_keys[0])
    assert verify_bundle(bundle, [keys[1], other_keys[1]]) == key_id(
        load_public_key(other_keys[1])
    )


def test_modified_file_is_named(bundle: Path, keys: tuple[Path, Path]) -> None:
    sign_bundle(bundle, keys[0])
    with (bundle / "model.tflite").open("ab") as handle:
        handle.write(b"\x01")
    with pytest.raises(SignatureError, match=r"^file model\.tflite was modified$"):
        verify_bundle(bundle, [keys[1]])


def test_added_file_is_unexpected(bundle: Path, keys: tuple[Path, Path]) -> None:
    sign_bundle(bundle, keys[0])
    (bundle / "backdoor.py").write_text("print('hi')")
    with pytest.raises(SignatureError, match=r"^unexpected file backdoor\.py$"):
        verify_bundle(bundle, [keys[1]])


def test_removed_file_is_missing(bundle: Path, keys: tuple[Path, Path]) -> None:
    sign_bundle(bundle, keys[0])
    (bundle / "labels.txt").unlink()
    with pytest.raises(SignatureError, match=r"labels\.txt is missing"):
        verify_bundle(bundle, [keys[1]])


def test_foreign_key_is_untrusted(
    bundle: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path]
) -> None:
    sign_bundle(bundle, other_keys[0])
    foreign = key_id(load_public_key(other_keys[1]))
    with pytest.raises(SignatureError, match=rf"^bundle signed by an untrusted key {foreign}$"):
        verify_bundle(bundle, [keys[1]])


def test_unsigned_bundle_is_refused(bundle: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(SignatureError, match=r"^bundle is not signed$"):
        verify_bundle(bundle, [keys[1]])


def test_rewritten_file_table_breaks_the_signature(bundle: Path, keys: tuple[Path, Path]) -> None:
    signature = sign_bundle(bundle, keys[0])
    (bundle / "model.tflite").write_bytes(b"evil model")
    document = json.loads(signature.read_text())
    document["files"]["model.tflite"] = hashlib.sha256(b"evil model").hexdigest()
    signature.write_text(json.dumps(document))
    with pytest.raises(SignatureError, match=r"^signature does not match$"):
        verify_bundle(bundle, [keys[1]])


def test_claiming_a_trusted_key_id_does_not_help(
    bundle: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path]
) -> None:
    signature = sign_bundle(bundle, other_keys[0])
    document = json.loads(signature.read_text())
    document["key_id"] = key_id(load_public_key(keys[1]))
    signature.write_text(json.dumps(document))
    with pytest.raises(SignatureError, match=r"^signature does not match$"):
        verify_bundle(bundle, [keys[1]])


@pytest.mark.parametrize(
    "content", ["not json", json.dumps({"schema": "other/1"}), json.dumps([1, 2])]
)
def test_malformed_signature_file_is_one_clear_error(
    bundle: Path, keys: tuple[Path, Path], content: str
) -> None:
    (bundle / "signature.json").write_text(content)
    with pytest.raises(SignatureError, match=r"signature\.json"):
        verify_bundle(bundle, [keys[1]])


def test_resigning_after_a_change_verifies_again(bundle: Path, keys: tuple[Path, Path]) -> None:
    sign_bundle(bundle, keys[0])
    (bundle / "labels.txt").write_text("zero\none\ntwo\n")
    sign_bundle(bundle, keys[0])
    assert verify_bundle(bundle, [keys[1]])


def test_symlink_in_bundle_is_refused(bundle: Path, keys: tuple[Path, Path]) -> None:
    (bundle / "link").symlink_to("/etc/passwd")
    with pytest.raises(SignatureError, match=r"symlink link"):
        sign_bundle(bundle, keys[0])


def test_corrupt_private_key(tmp_path: Path, bundle: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SignatureError, match=r"not a PEM ed25519 private key"):
        sign_bundle(bundle, bad)


def test_public_key_given_for_signing(keys: tuple[Path, Path]) -> None:
    with pytest.raises(SignatureError, match=r"is a public key"):
        load_private_key(keys[1])


def test_private_key_given_as_trusted_key(bundle: Path, keys: tuple[Path, Path]) -> None:
    sign_bundle(bundle, keys[0])
    with pytest.raises(SignatureError, match=r"is a private key"):
        verify_bundle(bundle, [keys[0]])


def test_rsa_key_is_not_ed25519(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "rsa.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SignatureError, match=r"not ed25519"):
        load_private_key(path)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match=r"cannot read key"):
        load_public_key(tmp_path / "nope.pub")


def test_no_trusted_keys(bundle: Path, keys: tuple[Path, Path]) -> None:
    sign_bundle(bundle, keys[0])
    with pytest.raises(SignatureError, match=r"no trusted keys"):
        verify_bundle(bundle, [])
