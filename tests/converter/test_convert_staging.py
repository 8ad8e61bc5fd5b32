"""Several profiles in one call: bundles reach ``--out`` only when every profile converted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from converters import convert as convert_module
from converters.convert import ConvertOptions, ProfileResult, _all_or_nothing
from converters.errors import ConvertError
from converters.profiles import load_profile


def fake_conversion(fail_on: str | None) -> Any:
    """Writes a bundle folder the way write_bundle does, or fails for one profile."""

    def convert_profile(opts: ConvertOptions, prep: Any, profile: Any, name: str, log: Any,
                        out: Path) -> ProfileResult:
        if profile.name == fail_on:
            raise ConvertError(f"{profile.name}: a layer cannot be converted")
        bundle = out / f"{name}-{profile.name}"
        bundle.mkdir(parents=True)
        (bundle / "manifest.json").write_text(f'{{"profile": "{profile.name}"}}')
        return ProfileResult(profile.name, bundle, {}, True)

    return convert_profile


def options(out: Path) -> ConvertOptions:
    return ConvertOptions(model=Path("m.keras"), profiles=["rpi4", "x86-cpu"],
                          calibration=Path("data"), out=out)


PROFILES = [load_profile("rpi4"), load_profile("x86-cpu")]


def test_every_bundle_moves_in_when_all_profiles_convert(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "m-rpi4").mkdir()
    (out / "m-rpi4" / "manifest.json").write_text("an older bundle")
    monkeypatch.setattr(convert_module, "convert_profile", fake_conversion(None))
    results = _all_or_nothing(options(out), None, PROFILES, "m", print)  # type: ignore[arg-type]
    assert sorted(p.name for p in out.iterdir()) == ["m-rpi4", "m-x86-cpu"]
    assert [r.bundle for r in results] == [out / "m-rpi4", out / "m-x86-cpu"]
    assert (out / "m-rpi4" / "manifest.json").read_text() == '{"profile": "rpi4"}'


def test_a_failing_later_profile_leaves_out_as_it_was(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("someone else's file")
    monkeypatch.setattr(convert_module, "convert_profile", fake_conversion("x86-cpu"))
    with pytest.raises(ConvertError, match="x86-cpu"):
        _all_or_nothing(options(out), None, PROFILES, "m", print)  # type: ignore[arg-type]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_an_out_folder_made_for_a_failed_call_is_removed(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "new" / "out"
    monkeypatch.setattr(convert_module, "convert_profile", fake_conversion("x86-cpu"))
    with pytest.raises(ConvertError):
        _all_or_nothing(options(out), None, PROFILES, "m", print)  # type: ignore[arg-type]
    assert not out.exists()
