"""Names that become topic levels (prefix, device ids, pipelines, groups) are checked by one rule
everywhere they are taken: the config, ``run``'s flags, ``deploy --device/--group``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from converters.deploy import check_targets
from edge_runtime.config import load_config
from edge_runtime.publish.topics import (
    RESERVED_PIPELINE_NAMES,
    TopicNameError,
    Topics,
    pipeline_name,
    topic_level,
)
from edge_runtime.runconfig import build_config
from edge_runtime.yamlconfig import ConfigError

CONFIG = """\
device_id: pi-1
mqtt:
  prefix: edge
groups: [kitchen]
pipelines:
  - name: door
    bundle: bundles/door
    source: /dev/video0
"""

BAD_LEVELS = ["", "a/b", "+", "#", "a+b", "$SYS", "two words", "-lead", "x" * 65, "é"]


@pytest.mark.parametrize("name", ["pi-1", "cam_2.lab", "A", "x" * 64])
def test_good_levels_pass(name: str) -> None:
    assert topic_level("device id", name) == name


@pytest.mark.parametrize("name", BAD_LEVELS)
def test_bad_levels_are_refused_in_one_line(name: str) -> None:
    with pytest.raises(TopicNameError, match="one MQTT topic level") as info:
        topic_level("device id", name)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", RESERVED_PIPELINE_NAMES)
def test_the_devices_own_topics_are_not_pipeline_names(name: str) -> None:
    with pytest.raises(TopicNameError, match="reserved"):
        pipeline_name(name)
    with pytest.raises(TopicNameError, match="reserved"):
        Topics("pi-1").result(name)


def test_a_multi_level_prefix_is_refused_by_the_topics_too() -> None:
    with pytest.raises(TopicNameError, match="prefix"):
        Topics("pi-1", prefix="a/b")


def config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_example_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    assert load_config(path).mqtt.prefix == "edge"


@pytest.mark.parametrize(("old", "new", "words"), [
    ("  prefix: edge", "  prefix: a/b", ["mqtt.prefix", "'a/b'", "topic level"]),
    ("  prefix: edge", "  prefix: /edge", ["mqtt.prefix"]),
    ("  - name: door", "  - name: cmd", ["pipelines[0].name", "'cmd' is reserved"]),
    ("  - name: door", "  - name: status", ["pipelines[0].name", "reserved"]),
    ("groups: [kitchen]", "groups: [kitchen, a/b]", ["groups", "'a/b'"]),
    ("device_id: pi-1", "device_id: '+'", ["device_id", "'+'"]),
])
def test_the_config_refuses_bad_names(tmp_path: Path, old: str, new: str,
                                      words: list[str]) -> None:
    message = config_error(tmp_path, CONFIG.replace(old, new))
    for word in words:
        assert word in message, message


def run_flags(**given: Any) -> dict[str, Any]:
    names = ("bundle", "source", "mqtt_url", "device_id", "pipeline_name", "state_dir",
             "trusted_keys")
    return {name: given.get(name, () if name == "trusted_keys" else None) for name in names}


def test_run_flags_refuse_a_reserved_pipeline_name() -> None:
    with pytest.raises(ConfigError, match="'cmd' is reserved"):
        build_config(None, run_flags(bundle=Path("m.tflite"), source="s", pipeline_name="cmd"))


@pytest.mark.parametrize(("devices", "groups", "prefix", "pipeline", "words"), [
    (["+"], [], "edge", None, "--device '+'"),
    (["a/b"], [], "edge", None, "--device 'a/b'"),
    ([], ["#"], "edge", None, "--group '#'"),
    (["pi-1"], [], "a/b", None, "--prefix 'a/b'"),
    (["pi-1"], [], "edge", "cmd", "reserved"),
])
def test_deploy_targets_are_single_topic_levels(devices: list[str], groups: list[str],
                                                prefix: str, pipeline: str | None,
                                                words: str) -> None:
    with pytest.raises(TopicNameError, match=words.replace("+", r"\+")):
        check_targets(devices, groups, prefix, pipeline)
