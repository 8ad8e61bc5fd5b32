"""The daemon's configuration: one YAML file, several pipelines, validated before anything starts.

Unknown keys are refused with "did you mean"; every error names the key and its line. The flags of
``edge-runtime run`` build the same model for the one-pipeline case.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .postprocess import DECODERS, TASKS
from .publish.policy import MODES
from .publish.settings import MqttSettings, parse_mqtt_url
from .publish.topics import pipeline_name, topic_level
from .system.paths import default_state_dir
from .yamlconfig import ConfigError, describe_errors, one_of, parse_yaml

TaskName = Annotated[str, AfterValidator(one_of("task", TASKS))]
DecoderName = Annotated[str, AfterValidator(one_of("decoder", DECODERS))]
PublishMode = Annotated[str, AfterValidator(one_of("mode", MODES))]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttConfig(_Model):
    url: str = Field("mqtt://127.0.0.1:1883",
                     description="mqtt://[user@]host[:port] or mqtts://… (password: password_file)")
    username: str | None = Field(None, description="Overrides the URL's user.")
    password: str | None = Field(None, description="Overrides the URL's password (never logged).")
    password_file: Path | None = Field(
        None, description="File whose first line is the password (or set EDGE_MQTT_PASSWORD).")
    ca_file: Path | None = Field(None, description="CA certificate for mqtts://.")
    cert_file: Path | None = Field(None, description="Client certificate for mqtts://.")
    key_file: Path | None = Field(None, description="Client key for mqtts://.")
    protocol: Literal["3.1.1", "5"] = Field("3.1.1", description="MQTT protocol version.")
    prefix: str = Field("edge", description="First topic level (one level: no '/').")
    client_id: str | None = Field(None, description="Default: edge-runtime-<device id>.")
    keepalive: int = Field(30, ge=5, le=3600, description="Keep-alive in seconds.")
    max_inflight: int = Field(100, ge=1, le=65535, description="Unacknowledged messages at most.")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return topic_level("prefix", value)

    def settings(self, device_id: str) -> MqttSettings:
        """The connection settings; reads the password file. Raises a one-line
        :class:`~edge_runtime.publish.settings.MqttSettingsError`, never showing the password."""
        return parse_mqtt_url(
            self.url, protocol=self.protocol, keepalive=self.keepalive,
            max_inflight=self.max_inflight, client_id=self.client_id or f"edge-runtime-{device_id}",
            username=self.username, password=self.password, password_file=self.password_file,
            ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file)


class PublishConfig(_Model):
    mode: PublishMode = Field("every", description="When to publish: " + ", ".join(MODES) + ".")
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="Drop predictions below this.")
    trigger_count: int = Field(1, ge=1, le=1000, description="Consecutive results to trigger.")
    refractory_s: float = Field(0.0, ge=0.0, description="Quiet time after a triggered publish.")
    heartbeat_s: float = Field(0.0, ge=0.0, description="Publish at least this often (0: off).")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of result messages.")


class WindowConfig(_Model):
    size: int = Field(..., ge=1, description="Readings per window.")
    stride: int = Field(0, ge=0, description="Readings between window starts (0: size).")
    channels: int = Field(1, ge=1, description="Values per reading.")


class ModelHints(_Model):
    """Describes a bare .tflite that has no manifest."""

    labels: Path | None = Field(None, description="labels.txt for a bare model.")
    task: TaskName | None = Field(None, description="One of " + ", ".join(TASKS) + ".")
    input_mean: float | list[float] | None = None
    input_std: float | list[float] | None = None
    color: Literal["RGB", "BGR", "GRAY"] | None = None
    resize: Literal["stretch", "letterbox"] | None = None
    decoder: DecoderName | None = Field(None, description="Detection decoder: "
                                        + ", ".join(DECODERS) + ".")


class PipelineConfig(_Model):
    name: str = Field("default", description="Pipeline name, the P in edge/D/P/result.")
    bundle: Path | None = Field(
        None, description="Bundle directory, packed .tar.gz, or a bare .tflite. None yet (or not "
                          "there yet): the pipeline waits for its first model from deploy.")
    source: str = Field(..., description="Image folder, video, rtsp://, camera, serial://, csv:, -.")
    fps: float | None = Field(None, gt=0, description="Pace a file source (a camera has its own).")
    loop: bool = Field(False, description="Repeat a file or folder source.")
    width: int | None = Field(None, ge=1, description="Requested camera width.")
    height: int | None = Field(None, ge=1, description="Requested camera height.")
    max_frames: int | None = Field(None, ge=1, description="Stop after this many results.")
    threads: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] | None = Field(
        None, description="Interpreter threads; auto (the default) measures what gives the most "
                          "results/s on this source and board.")
    decode: Literal["auto", "full", "v4l2m2m", "nvv4l2"] = Field(
        "auto", description="auto: JPEG frames at a reduced scale when the model is much smaller, "
                            "H.264 on the decoder the bundle's profile names; full: software, "
                            "full scale; v4l2m2m (Raspberry Pi) or nvv4l2 (Jetson): hardware.")
    decode_threads: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto", description="Threads of software video decoding; auto: one for files (the least "
                            "CPU), FFmpeg's own for streams (a camera must be kept up with).")
    delegate: str | None = Field(None, description="xnnpack, edgetpu[:usb|:pci], gpu, none, or .so")
    allow_cpu_fallback: bool = Field(False, description="Run on the CPU if the delegate fails.")
    publish: PublishConfig = Field(default_factory=PublishConfig)  # type: ignore[arg-type]
    postprocess: dict[str, Any] = Field(default_factory=dict, description="Task parameters.")
    window: WindowConfig | None = None
    model: ModelHints = Field(default_factory=ModelHints)  # type: ignore[arg-type]

    _base_dir: Path | None = PrivateAttr(None)

    @property
    def base_dir(self) -> Path | None:
        """The folder a relative ``source`` path is read from: the config file's own."""
        return self._base_dir

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return pipeline_name(value)


class OutboxConfig(_Model):
    max_messages: int = Field(100_000, ge=10, description="Oldest dropped beyond this.")
    max_bytes: int = Field(256 * 2**20, ge=65536, description="Oldest dropped beyond this.")
    synchronous: Literal["OFF", "NORMAL", "FULL"] = Field(
        "NORMAL", description="SQLite fsync policy (NORMAL: a power cut may cost the last commits).")


class CommandConfig(_Model):
    max_payload_bytes: int = Field(65536, ge=256, description="Larger commands are refused.")
    rate_per_s: float = Field(20.0, gt=0, description="Commands handled per second at most.")
    burst: int = Field(40, ge=1, description="Commands allowed in a burst.")
    max_bundle_bytes: int = Field(64 * 2**20, ge=1024, description="Largest deployable bundle.")
    bundle_roots: list[Path] = Field(default_factory=list,
                                     description="Where reload may read bundles from, besides "
                                                 "the state dir's bundles/.")
    deploy_idle_timeout_s: float = Field(30.0, gt=0, le=3600,
                                         description="A deploy with no chunk for this long is "
                                                     "dropped and answered.")


class MonitorConfig(_Model):
    enabled: bool = Field(True, description="Watch every pipeline's results against its bundle's "
                                            "reference; publish edge/D/P/health per window.")
    window: int = Field(500, ge=10, le=1_000_000, description="Results per health window.")
    max_window_s: float = Field(300.0, gt=0, description="A window closes after this long at "
                                                         "low rates.")
    min_results: int = Field(30, ge=1, description="A window with fewer results is not judged.")
    psi_warn: float = Field(0.1, gt=0, description="PSI at which a shift warns.")
    psi_alarm: float = Field(0.25, gt=0, description="PSI at which a shift is an alarm.")
    accuracy_warn_points: float = Field(3.0, gt=0, description="Estimated accuracy this many "
                                                               "points under the reference: warn.")
    accuracy_alarm_points: float = Field(8.0, gt=0, description="... and alarm.")
    frozen_alarm_share: float = Field(0.5, gt=0, le=1, description="Share of frozen frames that "
                                                                   "is an alarm.")
    blank_alarm_share: float = Field(0.5, gt=0, le=1, description="Share of blank frames that is "
                                                                  "an alarm.")
    watch_windows: int = Field(2, ge=0, le=100, description="Windows watched after a model "
                                                            "swap: an alarm in them rolls back.")


class SamplesConfig(_Model):
    enabled: bool = Field(False, description="Keep low-margin frames in STATE/samples (never "
                                             "published).")
    max_margin: float = Field(0.2, gt=0, le=1, description="Top-1 minus top-2 below this: kept.")
    max_count: int = Field(500, ge=1, description="Samples kept at most (oldest go first).")
    max_bytes: int = Field(64 * 2**20, ge=65536, description="Bytes kept at most.")


class HomeAssistantConfig(_Model):
    enabled: bool = Field(False, description="Publish Home Assistant MQTT discovery.")
    prefix: str = Field("homeassistant", description="Discovery prefix.")


class DaemonConfig(_Model):
    device_id: str = Field(default_factory=lambda: _default_device_id(),
                           description="The D in edge/D/...; default: host name.")
    state_dir: Path | None = Field(None, description="Outbox, seq counters, installed bundles.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig)  # type: ignore[arg-type]
    metrics_interval_s: float = Field(10.0, gt=0, description="Seconds between metrics messages.")
    trusted_keys: list[Path] = Field(default_factory=list, description="ed25519 public keys.")
    allow_unsigned_deploy: bool = Field(
        False, description="Without trusted_keys, accept unsigned bundles from deploy (anyone "
                           "who can publish on the broker can then replace the model).")
    groups: list[str] = Field(default_factory=list, description="Deployment groups joined.")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)  # type: ignore[arg-type]
    commands: CommandConfig = Field(default_factory=CommandConfig)  # type: ignore[arg-type]
    drain_timeout_s: float = Field(5.0, ge=0, description="Outbox drain time on shutdown.")
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)  # type: ignore[arg-type]
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)  # type: ignore[arg-type]
    samples: SamplesConfig = Field(default_factory=SamplesConfig)  # type: ignore[arg-type]
    pipelines: list[PipelineConfig] = Field(..., min_length=1)

    @field_validator("device_id")
    @classmethod
    def _device(cls, value: str) -> str:
        return topic_level("device_id", value)

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        return [topic_level("group", group) for group in value]

    @model_validator(mode="after")
    def _unique(self) -> DaemonConfig:
        names = [p.name for p in self.pipelines]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pipeline names must be unique; repeated: {', '.join(dupes)}")
        return self

    @property
    def resolved_state_dir(self) -> Path:
        return self.state_dir or default_state_dir()


def _default_device_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64].strip("-._")
    return host or "edge-device"


def load_config(path: Path, overlay: Callable[[dict[str, Any]], None] | None = None) -> DaemonConfig:
    """The config in ``path``; relative paths in it (bundles, sources, labels, keys, the state
    dir, bundle roots, MQTT password and TLS files) are read from the file's folder.

    ``overlay`` may change the parsed mapping before it is validated (``run``'s flags do). Raises
    ConfigError naming the key and its line.
    """
    root, data = parse_yaml(path)
    if overlay is not None:
        overlay(data)
    try:
        config = DaemonConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(str(path), root, exc, DaemonConfig)) from None
    base = path.resolve().parent
    config.trusted_keys = [_anchored(key, base) for key in config.trusted_keys]
    if config.state_dir is not None:
        config.state_dir = _anchored(config.state_dir, base)
    config.commands.bundle_roots = [_anchored(root, base) for root in config.commands.bundle_roots]
    mqtt = config.mqtt
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        value = getattr(mqtt, key)
        if value is not None:
            setattr(mqtt, key, _anchored(value, base))
    for pipeline in config.pipelines:
        if pipeline.bundle is not None:
            pipeline.bundle = _anchored(pipeline.bundle, base)
        if pipeline.model.labels is not None:
            pipeline.model.labels = _anchored(pipeline.model.labels, base)
        pipeline._base_dir = base
    return config


def _anchored(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else base / path


__all__ = ["ConfigError", "DaemonConfig", "PipelineConfig", "load_config"]
