from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from converters.edgetpu import EDGETPU_OPS
from converters.errors import ConvertError
from converters.profiles import (
    Budgets,
    Constraints,
    Profile,
    ProfileError,
    list_profiles,
    load_profile,
    profiles_dir,
    profiles_table,
)

SHIPPED = {"rpi4", "rpi5", "rpi-zero2w", "jetson-nano", "jetson-orin", "coral-usb", "x86-cpu"}
REPO_PROFILES = Path(__file__).resolve().parents[2] / "device_profiles"

# A valid user profile; line numbers below are relied on by the tests.
USER_PROFILE = """\
name: my-board
description: A test board.
arch: aarch64
cores: 4
ram_mb: 2048
accelerator: none
quantization: int8
io_dtype: int8
threads: 2
delegate: xnnpack
constraints:
  int8_only: false
  batch_one: true
budgets:
  max_size_bytes: 1000000
  max_latency_ms: 80
min_runtime: tflite-runtime 2.14
"""


@pytest.fixture(autouse=True)
def _shipped_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_PROFILES_DIR", raising=False)


def write(tmp_path: Path, text: str, name: str = "my-board.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def edited(tmp_path: Path, edit: Callable[[dict[str, Any]], None], base: str = "rpi4") -> Path:
    data = yaml.safe_load((REPO_PROFILES / f"{base}.yaml").read_text(encoding="utf-8"))
    edit(data)
    return write(tmp_path, yaml.safe_dump(data, sort_keys=False), f"{data['name']}.yaml")


def profile_error(path_or_name: str | Path) -> str:
    with pytest.raises(ProfileError) as info:
        load_profile(path_or_name)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the shipped profiles ------------------------------------------------------------------------


def test_every_shipped_profile_validates() -> None:
    profiles = list_profiles()
    assert {p.name for p in profiles} >= SHIPPED
    assert [p.name for p in profiles] == sorted(p.name for p in profiles)
    for profile in profiles:
        assert Path(profile.source).is_file()
        assert Path(profile.source).stem == profile.name
        assert profile.description.strip()


def test_default_profiles_dir_is_the_source_tree() -> None:
    assert profiles_dir() == REPO_PROFILES


def test_shipped_profiles_follow_their_boards() -> None:
    by_name = {p.name: p for p in list_profiles()}
    assert by_name["rpi-zero2w"].ram_mb == 512
    assert by_name["x86-cpu"].arch == "x86_64"
    nano = by_name["jetson-nano"]
    assert (nano.accelerator, nano.quantization, nano.io_dtype, nano.delegate) == (
        "gpu", "float16", "float32", "gpu")
    tight = by_name["rpi-zero2w"].budgets.max_size_bytes
    roomy = by_name["rpi4"].budgets.max_size_bytes
    assert tight is not None and roomy is not None and tight < roomy


def test_coral_profile_carries_the_edgetpu_constraints() -> None:
    coral = load_profile("coral-usb")
    assert (coral.accelerator, coral.quantization, coral.io_dtype) == ("edgetpu", "int8", "uint8")
    c = coral.constraints
    assert c.int8_only and c.static_shapes and c.batch_one and not c.allow_float_fallback
    assert c.allowed_ops is not None and set(c.allowed_ops) == EDGETPU_OPS


@pytest.mark.parametrize("model", [Profile, Constraints, Budgets])
def test_every_field_has_a_description(model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name}"


def test_settings_are_json_and_leave_out_where_the_file_was() -> None:
    settings = load_profile("rpi4").settings()
    decoded = json.loads(json.dumps(settings))
    assert decoded["name"] == "rpi4"
    assert decoded["quantization"] == "int8"
    assert decoded["constraints"]["batch_one"] is True
    assert "source" not in decoded


def test_runtime_requirement_is_split() -> None:
    assert load_profile("rpi4").runtime_requirement == ("tflite-runtime", (2, 14))


def test_errors_carry_cli_exit_codes() -> None:
    assert issubclass(ProfileError, ConvertError)
    assert ProfileError("x").exit_code == 2


# --- user profiles and lookups -------------------------------------------------------------------


def test_user_profile_from_a_path(tmp_path: Path) -> None:
    path = write(tmp_path, USER_PROFILE)
    profile = load_profile(str(path))
    assert profile.name == "my-board"
    assert profile.threads == 2
    assert profile.constraints.batch_one and not profile.constraints.static_shapes
    assert profile.budgets.max_latency_ms == 80
    assert profile.source == str(path)


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    text = USER_PROFILE.replace("name: my-board\n", "")
    assert load_profile(write(tmp_path, text, "garage-cam.yaml")).name == "garage-cam"


def test_equality_ignores_where_a_profile_came_from(tmp_path: Path) -> None:
    copy = tmp_path / "rpi4.yaml"
    shutil.copy(REPO_PROFILES / "rpi4.yaml", copy)
    shipped, mine = load_profile("rpi4"), load_profile(copy)
    assert shipped.source != mine.source
    assert shipped == mine
    assert shipped != load_profile("rpi5")


def test_unknown_name_suggests_the_closest() -> None:
    message = profile_error("rpi44")
    assert message.startswith("unknown profile 'rpi44' (did you mean 'rpi4'?); available: ")
    for name in SHIPPED:
        assert name in message


def test_unknown_name_without_a_close_match() -> None:
    message = profile_error("toaster")
    assert "did you mean" not in message
    assert "available: coral-usb" in message


def test_missing_file() -> None:
    assert profile_error("no/such/board.yaml") == "profile file not found: no/such/board.yaml"


def test_profiles_dir_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           ) -> None:
    write(tmp_path, USER_PROFILE)
    monkeypatch.setenv("EDGE_PROFILES_DIR", str(tmp_path))
    assert profiles_dir() == tmp_path
    assert [p.name for p in list_profiles()] == ["my-board"]
    assert load_profile("my-board").threads == 2
    assert "available: my-board" in profile_error("rpi4")


def test_a_named_profile_must_match_its_file_name(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, USER_PROFILE, "other.yaml")
    monkeypatch.setenv("EDGE_PROFILES_DIR", str(tmp_path))
    message = profile_error("other")
    assert "name 'my-board' does not match the file name" in message


def test_missing_profiles_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_PROFILES_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ProfileError, match="profiles directory not found"):
        list_profiles()


# --- schema errors: file, key, line, did-you-mean ------------------------------------------------


def test_misspelt_nested_key(tmp_path: Path) -> None:
    path = write(tmp_path, USER_PROFILE.replace("  int8_only: false", "  int8_onyl: false"))
    message = profile_error(path)
    assert message == (f"{path}: line 12: constraints.int8_onyl: unknown key "
                       "(did you mean 'int8_only'?)")


def test_misspelt_top_level_key_also_reports_the_missing_one(tmp_path: Path) -> None:
    path = write(tmp_path, USER_PROFILE.replace("threads: 2", "thread: 2"))
    message = profile_error(path)
    assert "line 9: thread: unknown key (did you mean 'threads'?)" in message
    assert "threads: required key is missing" in message


def test_wrong_type_names_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, USER_PROFILE.replace("max_latency_ms: 80", "max_latency_ms: fast"))
    message = profile_error(path)
    assert message.startswith(f"{path}: line 16: budgets.max_latency_ms: ")
    assert "'fast'" in message


def test_wrong_choice_suggests_a_value(tmp_path: Path) -> None:
    path = write(tmp_path, USER_PROFILE.replace("arch: aarch64", "arch: arch64"))
    message = profile_error(path)
    assert message.startswith(f"{path}: line 3: arch: ")
    assert "(did you mean 'aarch64'?)" in message


def test_booleans_are_not_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, USER_PROFILE.replace("threads: 2", "threads: yes"))
    assert "line 9: threads: " in profile_error(path)


def test_bad_delegate(tmp_path: Path) -> None:
    path = write(tmp_path, USER_PROFILE.replace("delegate: xnnpack", "delegate: xnnpak"))
    message = profile_error(path)
    assert "line 10: delegate: unknown delegate 'xnnpak' (did you mean 'xnnpack'?)" in message


def test_delegate_may_be_a_library_path(tmp_path: Path) -> None:
    text = USER_PROFILE.replace("delegate: xnnpack", "delegate: /opt/lib/libarmnnDelegate.so.29")
    assert load_profile(write(tmp_path, text)).delegate.endswith(".so.29")


def test_bad_runtime_requirement(tmp_path: Path) -> None:
    path = write(tmp_path, USER_PROFILE.replace("tflite-runtime 2.14", "tflite 2"))
    assert "line 17: min_runtime: 'tflite 2' is not a runtime requirement" in profile_error(path)


def test_many_errors_stay_on_one_line(tmp_path: Path) -> None:
    text = "".join(f"bogus{i}: 1\n" for i in range(6))
    message = profile_error(write(tmp_path, text))
    assert "more)" in message


def test_invalid_yaml_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\narch: [aarch64\ncores: 4\n")
    assert profile_error(path).startswith(f"{path}: line ")
    assert "not valid YAML" in profile_error(path)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, USER_PROFILE + "threads: 4\n")
    assert profile_error(path) == f"{path}: line 18: duplicate key 'threads' (first at line 9)"


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n"])
def test_a_profile_is_a_mapping(tmp_path: Path, text: str) -> None:
    assert "the profile must be a mapping of keys" in profile_error(write(tmp_path, text))


# --- cross-field rules ---------------------------------------------------------------------------


def _set(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        for dotted, value in changes.items():
            *parents, key = dotted.split("__")
            target = data
            for parent in parents:
                target = target[parent]
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    return edit


@pytest.mark.parametrize(("base", "edit", "key", "fragment"), [
    ("rpi4", _set(quantization="float16"), "io_dtype", "needs quantization int8"),
    ("rpi4", _set(quantization="dynamic", io_dtype="uint8"), "io_dtype", "needs quantization int8"),
    ("rpi4", _set(quantization="dynamic", io_dtype="float32", constraints__int8_only=True,
                  constraints__allow_float_fallback=False),
     "constraints.int8_only", "needs quantization int8"),
    ("rpi4", _set(constraints__int8_only=True), "constraints.allow_float_fallback",
     "set allow_float_fallback: false"),
    ("rpi4", _set(delegate="gpu"), "delegate", "needs accelerator gpu"),
    ("rpi4", _set(delegate="edgetpu"), "delegate", "needs accelerator edgetpu"),
    ("coral-usb", _set(constraints__static_shapes=False), "constraints.static_shapes",
     "the Edge TPU needs"),
    ("coral-usb", _set(constraints__batch_one=False), "constraints.batch_one", "the Edge TPU needs"),
    ("coral-usb", _set(constraints__allowed_ops=None), "constraints.allowed_ops", "op list"),
    ("coral-usb", _set(delegate="xnnpack"), "delegate", "needs delegate edgetpu"),
])
def test_cross_field_rules(tmp_path: Path, base: str, edit: Callable[[dict[str, Any]], None],
                           key: str, fragment: str) -> None:
    message = profile_error(edited(tmp_path, edit, base))
    assert f": {key}: " in message
    assert fragment in message


def test_rule_errors_point_at_the_offending_line(tmp_path: Path) -> None:
    path = write(tmp_path, USER_PROFILE.replace("quantization: int8", "quantization: float32"))
    assert profile_error(path) == (f"{path}: line 8: io_dtype: io_dtype int8 needs quantization "
                                   "int8 (a float32 model has float32 input and output)")


def test_float_profiles_with_float_io_are_fine(tmp_path: Path) -> None:
    text = USER_PROFILE.replace("quantization: int8", "quantization: dynamic").replace(
        "io_dtype: int8", "io_dtype: float32")
    assert load_profile(write(tmp_path, text)).quantization == "dynamic"


def test_op_names_are_normalised_and_checked(tmp_path: Path) -> None:
    ok = USER_PROFILE.replace("  batch_one: true\n", "  batch_one: true\n  allowed_ops: [conv_2d, ADD]\n")
    assert load_profile(write(tmp_path, ok)).constraints.allowed_ops == ["CONV_2D", "ADD"]
    bad = ok.replace("[conv_2d, ADD]", "[CONV_2D, 'conv 2d']")
    assert "not a TFLite op name: 'CONV 2D'" in profile_error(write(tmp_path, bad))


# --- the table -----------------------------------------------------------------------------------


def test_table_has_a_row_per_profile_in_aligned_columns() -> None:
    profiles = list_profiles()
    lines = profiles_table(profiles).splitlines()
    assert lines[0].split()[:3] == ["NAME", "ARCH", "CORES"]
    assert len(lines) == len(profiles) + 1
    arch_at, delegate_at = lines[0].index("ARCH"), lines[0].index("DELEGATE")
    for line, profile in zip(lines[1:], profiles, strict=True):
        assert line.startswith(profile.name + " ")
        assert line[arch_at:].startswith(profile.arch)
        assert line[delegate_at:].startswith(Path(profile.delegate).name)
    coral = next(line for line in lines if line.startswith("coral-usb"))
    assert "8 MiB" in coral and "20 ms" in coral


def test_table_of_nothing_is_just_the_header() -> None:
    assert profiles_table([]).split()[0] == "NAME"
