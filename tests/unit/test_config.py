"""The daemon's YAML config (errors with line numbers and "did you mean") and how ``run``'s flags
merge into it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_runtime.config import DaemonConfig, load_config
from edge_runtime.runconfig import build_config, check_config_file
from edge_runtime.sources import SourceOptions, open_source
from edge_runtime.yamlconfig import ConfigError, did_you_mean

BASE = """\
device_id: pi-1
mqtt:
  url: mqtt://broker.local:1884
pipelines:
  - name: door
    bundle: bundles/door
    source: /dev/video0
    fps: 10
    publish:
      min_score: 0.5
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ----- the file ------------------------------------------------------------------------------


def test_a_good_file_loads_with_defaults_filled_in(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.device_id == "pi-1"
    assert config.mqtt.url == "mqtt://broker.local:1884"
    assert config.mqtt.prefix == "edge"
    (door,) = config.pipelines
    assert door.name == "door" and door.fps == 10 and door.loop is False
    assert door.publish.min_score == 0.5 and door.publish.mode == "every"
    assert door.publish.qos == 1
    assert config.metrics_interval_s == 10


def test_video_decoding_threads_are_auto_unless_told_otherwise(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, BASE)).pipelines[0].decode_threads == "auto"
    text = BASE.replace("    fps: 10", "    fps: 10\n    decode_threads: 4")
    assert load_config(write(tmp_path, text)).pipelines[0].decode_threads == 4
    message = config_error(tmp_path, BASE.replace("    fps: 10", "    fps: 10\n    decode_threads: 0"))
    assert "pipelines[0].decode_threads" in message


def test_a_relative_bundle_is_found_beside_the_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.pipelines[0].bundle == tmp_path / "bundles" / "door"


@pytest.mark.parametrize(("old", "new", "words"), [
    ("device_id: pi-1", "devce_id: pi-1", ["line 1", "devce_id", "did you mean 'device_id'"]),
    ("  url: mqtt", "  ulr: mqtt", ["line 3", "mqtt.ulr", "did you mean 'url'"]),
    ("    fps: 10", "    fsp: 10", ["line 8", "pipelines[0].fsp", "did you mean 'fps'"]),
    ("      min_score: 0.5", "      min_scor: 0.5",
     ["line 10", "pipelines[0].publish.min_scor", "did you mean 'min_score'"]),
])
def test_an_unknown_key_names_its_line_and_the_likely_key(tmp_path: Path, old: str, new: str,
                                                          words: list[str]) -> None:
    message = config_error(tmp_path, BASE.replace(old, new))
    assert "unknown key" in message
    for word in words:
        assert word in message, message


def test_an_unknown_key_far_from_any_known_one_gets_no_suggestion(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE + "zebra: 1\n")
    assert "line 11" in message and "zebra: unknown key" in message
    assert "did you mean" not in message


@pytest.mark.parametrize(("old", "new", "words"), [
    ("    fps: 10", "    fps: fast", ["line 8", "pipelines[0].fps", "'fast'"]),
    ("    fps: 10", "    fps: -2", ["line 8", "pipelines[0].fps", "greater than 0"]),
    ("      min_score: 0.5", "      min_score: 3",
     ["line 10", "pipelines[0].publish.min_score", "less than or equal to 1"]),
    ("      min_score: 0.5", "      mode: evry", ["line 10", "'evry'", "did you mean 'every'"]),
    ("device_id: pi-1", "device_id: pi/1", ["line 1", "device_id", "topic level"]),
])
def test_a_bad_value_names_its_key_and_line(tmp_path: Path, old: str, new: str,
                                            words: list[str]) -> None:
    message = config_error(tmp_path, BASE.replace(old, new))
    for word in words:
        assert word in message, message


def test_a_missing_required_key_is_named(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE.replace("    source: /dev/video0\n", ""))
    assert "pipelines[0].source: required key is missing" in message


def test_pipeline_names_must_be_unique(tmp_path: Path) -> None:
    twice = BASE + "  - name: door\n    bundle: b\n    source: c\n"
    assert "repeated: door" in config_error(tmp_path, twice)


def test_several_errors_are_reported_together(tmp_path: Path) -> None:
    text = BASE.replace("devi", "devx").replace("    fps: 10", "    fps: no")
    message = config_error(tmp_path, text)
    assert "devxce_id" in message and "pipelines[0].fps" in message


def test_broken_yaml_names_its_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE.replace("    fps: 10", "    fps: [10"))
    assert "not valid YAML" in message and "line" in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just words\n"])
def test_a_config_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str) -> None:
    assert "mapping" in config_error(tmp_path, text)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_a_topic_prefix_with_wildcards_is_refused(tmp_path: Path) -> None:
    text = BASE.replace("  url: mqtt://broker.local:1884", "  prefix: edge/#")
    assert "mqtt.prefix" in config_error(tmp_path, text)


def test_did_you_mean_only_suggests_close_words() -> None:
    assert did_you_mean("sourse", ["source", "bundle"]) == " (did you mean 'source'?)"
    assert did_you_mean("xyz", ["source", "bundle"]) == ""


# ----- flags, with and without a file --------------------------------------------------------


def flags(**given: Any) -> dict[str, Any]:
    names = ("bundle", "source", "mqtt_url", "mqtt_ca", "device_id", "pipeline_name",
             "state_dir", "fps", "max_frames", "loop", "labels", "task", "input_mean",
             "input_std", "color", "threads", "delegate", "trusted_keys", "monitor_window",
             "no_monitor")
    unknown = set(given) - set(names)
    assert not unknown, unknown
    return {name: given.get(name, () if name == "trusted_keys" else None) for name in names}


def test_flags_alone_make_one_default_pipeline() -> None:
    config = build_config(None, flags(bundle=Path("m.tflite"), source="frames",
                                      mqtt_url="mqtt://h:1999", device_id="cam-2",
                                      state_dir=Path("/tmp/s"), fps=5.0, max_frames=3,
                                      loop=True))
    assert isinstance(config, DaemonConfig)
    (pipeline,) = config.pipelines
    assert pipeline.name == "default" and pipeline.bundle == Path("m.tflite")
    assert (pipeline.source, pipeline.fps, pipeline.max_frames, pipeline.loop) == \
        ("frames", 5.0, 3, True)
    assert config.device_id == "cam-2" and config.mqtt.url == "mqtt://h:1999"
    assert config.resolved_state_dir == Path("/tmp/s")


def test_flags_without_a_source_are_refused() -> None:
    with pytest.raises(ConfigError, match="give --source and --bundle"):
        build_config(None, flags(bundle=Path("m.tflite")))


def test_flags_without_a_bundle_make_a_pipeline_that_waits_for_deploy() -> None:
    config = build_config(None, flags(source="frames", monitor_window=50))
    assert config.pipelines[0].bundle is None and config.pipelines[0].source == "frames"
    assert config.monitor.window == 50 and config.monitor.enabled


def test_check_config_says_a_pipeline_without_a_bundle_waits(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    path = write(tmp_path, f"pipelines:\n  - source: {images}\n")
    ok, note = check_config_file(path)
    assert "ok" in ok and "no bundle yet" in note and "waits for one from deploy" in note


def test_bare_model_flags_become_model_hints() -> None:
    config = build_config(None, flags(bundle=Path("m.tflite"), source="frames",
                                      labels=Path("labels.txt"), task="classification",
                                      input_mean="0", input_std="127.5, 127.5,127.5",
                                      color="GRAY"))
    hints = config.pipelines[0].model
    assert hints.input_mean == 0.0 and hints.input_std == [127.5, 127.5, 127.5]
    assert (hints.labels, hints.task, hints.color) == (Path("labels.txt"), "classification",
                                                       "GRAY")


def test_a_mean_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(ConfigError, match="'abc' is not a number"):
        build_config(None, flags(bundle=Path("m"), source="s", input_mean="abc"))


def test_flag_values_are_checked_like_the_file() -> None:
    with pytest.raises(ConfigError, match=r"pipelines\[0\]\.fps"):
        build_config(None, flags(bundle=Path("m"), source="s", fps=-1.0))
    with pytest.raises(ConfigError, match="device_id"):
        build_config(None, flags(bundle=Path("m"), source="s", device_id="a/b"))


def test_flags_win_over_the_file_and_the_rest_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    config = build_config(path, flags(fps=2.0, mqtt_url="mqtt://other:1", loop=True))
    (door,) = config.pipelines
    assert door.name == "door" and door.fps == 2.0 and door.loop is True
    assert door.publish.min_score == 0.5 and door.source == "/dev/video0"
    assert config.mqtt.url == "mqtt://other:1" and config.device_id == "pi-1"


def test_a_file_alone_is_used_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    assert build_config(path, flags()) == load_config(path)


TWO = BASE + "  - name: yard\n    bundle: bundles/yard\n    source: /dev/video1\n"


def test_pipeline_picks_which_pipeline_the_flags_change(tmp_path: Path) -> None:
    config = build_config(write(tmp_path, TWO), flags(pipeline_name="yard", fps=3.0))
    fps = {p.name: p.fps for p in config.pipelines}
    assert fps == {"door": 10, "yard": 3.0}


def test_pipeline_flags_need_a_name_when_the_file_has_several(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="say which with --pipeline"):
        build_config(write(tmp_path, TWO), flags(fps=3.0))


def test_trusted_keys_from_flags_add_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "trusted_keys: [/keys/a.pub]\n")
    config = build_config(path, flags(trusted_keys=(Path("/keys/b.pub"),)))
    assert config.trusted_keys == [Path("/keys/a.pub"), Path("/keys/b.pub")]


def test_the_mqtt_ca_flag_sets_the_ca_file(tmp_path: Path) -> None:
    config = build_config(write(tmp_path, BASE), flags(mqtt_ca=Path("/etc/ca.pem")))
    assert config.mqtt.ca_file == Path("/etc/ca.pem")
    assert config.mqtt.url == "mqtt://broker.local:1884"


# ----- check-config --------------------------------------------------------------------------


def real_sources(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((8, 8, 3), np.uint8))
    model = tmp_path / "model.tflite"
    model.write_bytes(b"not opened by check-config")
    return images, model


def test_check_config_says_ok_for_a_good_file(tmp_path: Path) -> None:
    images, model = real_sources(tmp_path)
    path = write(tmp_path, f"device_id: cam\npipelines:\n  - bundle: {model}\n"
                           f"    source: {images}\n")
    (line,) = check_config_file(path)
    assert "ok" in line and "cam" in line and "default" in line


def test_check_config_names_a_missing_bundle_and_source(tmp_path: Path) -> None:
    path = write(tmp_path, f"pipelines:\n  - bundle: {tmp_path / 'gone.tflite'}\n"
                           f"    source: {tmp_path / 'nowhere'}\n")
    with pytest.raises(ConfigError) as info:
        check_config_file(path)
    message = str(info.value)
    assert "gone.tflite does not exist" in message and "nowhere" in message


def test_flags_complete_a_file_that_has_no_pipelines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     ) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    path = write(conf, "device_id: pi-9\nmqtt:\n  url: mqtt://broker.local:1884\n")
    work = tmp_path / "work"
    (work / "frames").mkdir(parents=True)
    monkeypatch.chdir(work)
    config = build_config(path, flags(bundle=Path("m.tflite"), source="frames"))
    (pipeline,) = config.pipelines
    assert config.device_id == "pi-9" and config.mqtt.url == "mqtt://broker.local:1884"
    # Flags' relative paths are read from the working directory, not from the config's folder.
    assert pipeline.bundle == Path("m.tflite") and pipeline.base_dir is None
    assert open_source(pipeline.source, SourceOptions(base_dir=pipeline.base_dir)).kind == "images"


def test_a_relative_csv_source_flag_is_read_from_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    path = write(conf, "pipelines:\n  - bundle: m.tflite\n    source: /dev/video0\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "r.csv").write_text("1,2\n3,4\n")
    monkeypatch.chdir(tmp_path)
    (pipeline,) = build_config(path, flags(source="csv:data/r.csv")).pipelines
    assert pipeline.bundle == conf.resolve() / "m.tflite"  # still the file's, from its folder
    open_source(pipeline.source, SourceOptions(base_dir=pipeline.base_dir))


@pytest.mark.parametrize(("text", "given", "where"), [
    ("pipelines: [oops]\n", {"fps": 2.0}, "line 1: pipelines[0]"),
    ("mqtt: mqtt://host\n" + BASE.split("\n", 3)[3], {"mqtt_url": "mqtt://h:1"}, "line 1: mqtt"),
    ("trusted_keys: /etc/k.pub\n" + BASE, {"trusted_keys": (Path("/k/b.pub"),)},
     "line 1: trusted_keys"),
    ("pipelines:\n  - bundle: b\n", {"fps": 2.0}, "line 2: pipelines[0].source"),
])
def test_a_broken_file_is_reported_by_line_even_with_flags(tmp_path: Path, text: str,
                                                           given: dict[str, Any],
                                                           where: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(where)):
        build_config(write(tmp_path, text), flags(**given))


def test_a_bad_flag_over_a_good_file_is_blamed_on_the_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"options.*pipelines\[0\]\.fps"):
        build_config(write(tmp_path, BASE), flags(fps=0.0))


def test_a_file_without_pipelines_or_flags_names_the_missing_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pipelines"):
        build_config(write(tmp_path, "device_id: pi-9\n"), flags())


def test_a_relative_source_and_labels_are_read_beside_the_config(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  ) -> None:
    _images, model = real_sources(tmp_path)
    path = write(tmp_path, "pipelines:\n  - bundle: model.tflite\n    source: images\n"
                           "    model:\n      labels: labels.txt\ntrusted_keys: [keys/a.pub]\n")
    monkeypatch.chdir(Path("/"))
    config = load_config(path)
    (pipeline,) = config.pipelines
    assert pipeline.bundle == model and pipeline.base_dir == tmp_path.resolve()
    assert pipeline.model.labels == tmp_path.resolve() / "labels.txt"
    assert config.trusted_keys == [tmp_path.resolve() / "keys" / "a.pub"]
    (line,) = check_config_file(path)
    assert "ok" in line


def test_flags_fill_in_what_a_template_pipeline_leaves_out(tmp_path: Path) -> None:
    path = write(tmp_path, "pipelines:\n  - name: cam\n    bundle: m.tflite\n")
    (cam,) = build_config(path, flags(source="/dev/video0")).pipelines
    assert (cam.name, cam.source, cam.bundle) == ("cam", "/dev/video0", tmp_path / "m.tflite")
    with pytest.raises(ConfigError, match=r"line 2: pipelines\[0\]\.source"):
        build_config(path, flags(fps=2.0))


def test_pipelines_that_are_not_a_list_are_refused_even_with_flags(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 1: pipelines"):
        build_config(write(tmp_path, "pipelines: {}\n"), flags(bundle=Path("m"), source="s"))


def test_a_tilde_in_path_flags_means_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = build_config(write(tmp_path, BASE), flags(bundle=Path("~/m.tflite"),
                                                       source="~/frames", labels=Path("~/l.txt")))
    (door,) = config.pipelines
    assert door.bundle == tmp_path / "m.tflite" and door.source == str(tmp_path / "frames")
    assert door.model.labels == tmp_path / "l.txt"
