from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.bundles.packing import PackError, pack_bundle, unpack_bundle
from edge_runtime.bundles.signing import SignatureError, generate_keypair


def make_bundle(root: Path, name: str = "digits-rpi4", model: bytes = b"TFL3model") -> Path:
    bundle = root / name
    bundle.mkdir(parents=True)
    (bundle / "model.tflite").write_bytes(model)
    (bundle / "labels.txt").write_text("zero\none\n")
    (bundle / "manifest.json").write_text(json.dumps({"schema": "edge-bundle/1"}))
    (bundle / "report.html").write_text("<html></html>")
    (bundle / "report.json").write_text("{}")
    return bundle


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, data: bytes | None = b"x", kind: bytes = tarfile.REGTYPE) -> tuple[
    tarfile.TarInfo, bytes | None
]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, data if kind == tarfile.REGTYPE else None


def directory(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info, None


def valid_members(top: str = "b") -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [directory(top), member(f"{top}/manifest.json", b"{}")]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "work")


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "installed"
    path.mkdir()
    return path


def test_pack_writes_archive_beside_the_bundle(bundle: Path) -> None:
    archive = pack_bundle(bundle)
    assert archive == bundle.parent / "digits-rpi4.tar.gz"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == "digits-rpi4"
    assert all(name == "digits-rpi4" or name.startswith("digits-rpi4/") for name in names)
    assert [p.name for p in bundle.parent.iterdir() if p.name.startswith(".")] == []


def test_round_trip_restores_every_byte(bundle: Path, dest: Path) -> None:
    unpacked, _ = unpack_bundle(pack_bundle(bundle), dest)
    assert unpacked == dest / "digits-rpi4"
    assert tree(unpacked) == tree(bundle)
    assert sorted(p.name for p in dest.iterdir()) == ["digits-rpi4"]


def test_unpack_accepts_bytes(bundle: Path, dest: Path) -> None:
    unpacked, _ = unpack_bundle(pack_bundle(bundle).read_bytes(), dest)
    assert tree(unpacked) == tree(bundle)


def test_packing_is_deterministic(bundle: Path, tmp_path: Path) -> None:
    first = pack_bundle(bundle, out=tmp_path / "one.tar.gz").read_bytes()
    os.utime(bundle / "model.tflite", (1, 1))
    second = pack_bundle(bundle, out=tmp_path / "two.tar.gz").read_bytes()
    assert first == second


def test_out_may_name_a_directory(bundle: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "dist"
    out_dir.mkdir()
    assert pack_bundle(bundle, out=out_dir) == out_dir / "digits-rpi4.tar.gz"


def test_pack_signs_when_given_a_key(bundle: Path, dest: Path, tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "keys")
    archive = pack_bundle(bundle, sign_key=private)
    with tarfile.open(archive) as tar:
        assert "digits-rpi4/signature.json" in tar.getnames()
    unpacked, release = unpack_bundle(archive, dest, trusted_keys=[public])
    assert (unpacked / "signature.json").is_file()
    assert release is not None and len(release.key_id) == 16


def test_untrusted_archive_leaves_nothing_behind(bundle: Path, dest: Path, tmp_path: Path) -> None:
    private, _ = generate_keypair(tmp_path / "keys")
    _, stranger = generate_keypair(tmp_path / "stranger")
    archive = pack_bundle(bundle, sign_key=private)
    with pytest.raises(SignatureError, match=r"untrusted key"):
        unpack_bundle(archive, dest, trusted_keys=[stranger])
    assert list(dest.iterdir()) == []


def test_new_version_replaces_the_old_one(bundle: Path, dest: Path, tmp_path: Path) -> None:
    (bundle / "old-only.txt").write_text("gone after the update")
    unpack_bundle(pack_bundle(bundle), dest)
    newer = make_bundle(tmp_path / "v2", model=b"TFL3newer")
    unpacked, _ = unpack_bundle(pack_bundle(newer), dest)
    assert tree(unpacked) == tree(newer)
    assert sorted(p.name for p in dest.iterdir()) == ["digits-rpi4"]


def test_failed_pack_keeps_the_previous_archive(bundle: Path) -> None:
    archive = pack_bundle(bundle)
    before = archive.read_bytes()
    (bundle / "escape").symlink_to("/etc")
    with pytest.raises(PackError, match=r"escape"):
        pack_bundle(bundle)
    assert archive.read_bytes() == before


def test_pack_refuses_a_directory_without_manifest(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackError, match=r"not a bundle directory"):
        pack_bundle(tmp_path / "empty")


def test_pack_reports_a_bad_signing_key(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "junk.key").write_text("junk")
    with pytest.raises(PackError, match=r"junk\.key"):
        pack_bundle(bundle, sign_key=tmp_path / "junk.key")


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([*valid_members(), member("/etc/cron.d/evil")], "absolute path"),
        ([*valid_members(), member("b/../../evil")], "escapes the bundle"),
        ([*valid_members(), member("b/link", kind=tarfile.SYMTYPE)], "is a symlink"),
        ([*valid_members(), member("b/hard", kind=tarfile.LNKTYPE)], "is a hard link"),
        ([*valid_members(), member("b/tty", kind=tarfile.CHRTYPE)], "is a device"),
        ([*valid_members(), member("b/fifo", kind=tarfile.FIFOTYPE)], "is a FIFO"),
        ([*valid_members("a"), *valid_members("b")], "exactly one top-level"),
        ([member("model.tflite")], "not a directory"),
        ([directory("b"), member("b/model.tflite")], "no b/manifest.json"),
        ([*valid_members(), member("b/manifest.json", b"{}")], "more than once"),
        ([], "empty"),
    ],
)
def test_unsafe_or_wrong_archives_are_refused(
    dest: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], message: str
) -> None:
    with pytest.raises(PackError, match=message):
        unpack_bundle(tar_bytes(*members), dest)
    assert list(dest.iterdir()) == []
    assert not (dest.parent / "evil").exists()


def test_archive_larger_than_the_limit_is_refused(dest: Path) -> None:
    archive = tar_bytes(*valid_members(), member("b/model.tflite", b"\0" * 5000))
    with pytest.raises(PackError, match=r"more than 4096 bytes"):
        unpack_bundle(archive, dest, max_bytes=4096)
    assert list(dest.iterdir()) == []


def test_dot_slash_prefix_is_accepted(dest: Path) -> None:
    archive = tar_bytes(directory("./"), directory("./b"), member("./b/manifest.json", b"{}"))
    assert (unpack_bundle(archive, dest)[0] / "manifest.json").read_bytes() == b"{}"


@pytest.mark.parametrize(
    "payload",
    [b"definitely not an archive", gzip.compress(b"not a tar inside gzip" * 40)],
)
def test_corrupt_archive_is_one_clear_error(dest: Path, payload: bytes) -> None:
    with pytest.raises(PackError, match=r"corrupt"):
        unpack_bundle(payload, dest)
    assert list(dest.iterdir()) == []


def test_truncated_archive_is_refused(bundle: Path, dest: Path) -> None:
    (bundle / "model.tflite").write_bytes(os.urandom(64 * 1024))
    data = pack_bundle(bundle).read_bytes()
    with pytest.raises(PackError, match=r"corrupt|cannot extract"):
        unpack_bundle(data[: len(data) // 2], dest)
    assert list(dest.iterdir()) == []


def test_missing_archive_file(tmp_path: Path, dest: Path) -> None:
    with pytest.raises(PackError, match=r"does not exist"):
        unpack_bundle(tmp_path / "nope.tar.gz", dest)


def test_unwritable_destinations_are_pack_errors(bundle: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(PackError, match="cannot write"):
        pack_bundle(bundle, out=blocker / "x.tar.gz")
    with pytest.raises(PackError, match="cannot unpack into"):
        unpack_bundle(pack_bundle(bundle), blocker / "bundles")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.dictionaries(
        st.text(alphabet="abcdefghij-_.0123456789", min_size=1, max_size=12).filter(
            lambda name: name not in {".", ".."} and name != "manifest.json"
        ),
        st.binary(max_size=2048),
        max_size=6,
    )
)
def test_any_bundle_survives_a_round_trip(tmp_path: Path, files: dict[str, bytes]) -> None:
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    bundle = make_bundle(work / "src")
    for name, data in files.items():
        (bundle / name).write_bytes(data)
    unpacked, _ = unpack_bundle(pack_bundle(bundle), work / "dest")
    assert tree(unpacked) == tree(bundle)
