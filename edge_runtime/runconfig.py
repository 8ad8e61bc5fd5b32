"""Build the daemon's config from a file, from ``run``'s flags, or both (flags win)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config import DaemonConfig, load_config
from .publish.options import FLAG_KEYS, warn_if_password_in_url
from .yamlconfig import ConfigError, describe_errors

PIPELINE_FLAGS = {"bundle": "bundle", "source": "source", "fps": "fps", "max_frames": "max_frames",
                  "loop": "loop", "threads": "threads", "delegate": "delegate"}
HINT_FLAGS = ("labels", "task", "input_mean", "input_std", "color")


def build_config(config_path: Path | None, flags: dict[str, Any]) -> DaemonConfig:
    """The config from ``config_path`` with the flags laid over it, or from the flags alone.

    The file is validated on its own first, so its errors name its lines; what the flags then
    change is checked as ``options``. Paths in flags are relative to the working directory.
    """
    if config_path is None:
        data: dict[str, Any] = {}
        _apply_device_flags(data, flags)
        _apply_pipeline_flags(data, flags, from_file=False)
        return _validate(data)
    from_file = _load_file(config_path, flags)
    bases = {p.name: p.base_dir for p in from_file.pipelines}
    data = from_file.model_dump(exclude_unset=True)
    _apply_device_flags(data, flags)
    target = _apply_pipeline_flags(data, flags, from_file=True)
    config = _validate(data)
    for pipeline in config.pipelines:
        flagged = pipeline.name == target and _given(flags, "source")
        pipeline._base_dir = None if flagged else bases.get(pipeline.name)
    return config


def _load_file(path: Path, flags: dict[str, Any]) -> DaemonConfig:
    """The file, validated. What the flags will give may be missing from it: no pipelines at
    all, or the flags' pipeline without its bundle or source (a template)."""
    given = {key: flags[key] for key in ("bundle", "source") if _given(flags, key)}
    if not given:
        return load_config(path)

    def from_flags(data: dict[str, Any]) -> None:
        pipelines = data.get("pipelines")
        if pipelines is None or pipelines == []:
            if "source" in given:
                data["pipelines"] = [{"name": flags.get("pipeline_name") or "default", **given}]
            return
        if not isinstance(pipelines, list):
            return
        target = _flag_target(pipelines, flags.get("pipeline_name"))
        if target is not None:
            for key, value in given.items():
                target.setdefault(key, value)

    return load_config(path, from_flags)


def _flag_target(pipelines: list[Any], name: str | None) -> dict[str, Any] | None:
    """The pipeline the flags change: the one ``--pipeline`` names (``default`` when it names
    none), or else the only one there is."""
    mappings = [p for p in pipelines if isinstance(p, dict)]
    named = next((p for p in mappings if p.get("name", "default") == (name or "default")), None)
    if named is None and name is None and len(pipelines) == 1 and mappings:
        return mappings[0]
    return named


def _validate(data: dict[str, Any]) -> DaemonConfig:
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors("options", None, exc, DaemonConfig)) from None


def _given(flags: dict[str, Any], key: str) -> bool:
    return flags.get(key) not in (None, ())


def _apply_device_flags(data: dict[str, Any], flags: dict[str, Any]) -> None:
    for key in ("device_id", "state_dir"):
        if _given(flags, key):
            data[key] = flags[key]
    mqtt = dict(data.get("mqtt") or {})
    if _given(flags, "mqtt_url"):
        warn_if_password_in_url(flags["mqtt_url"])
        mqtt["url"] = flags["mqtt_url"]
    for flag, key in FLAG_KEYS.items():
        if _given(flags, flag):
            mqtt[key] = flags[flag]
    if mqtt:
        data["mqtt"] = mqtt
    monitor = dict(data.get("monitor") or {})
    if _given(flags, "monitor_window"):
        monitor["window"] = flags["monitor_window"]
    if flags.get("no_monitor"):
        monitor["enabled"] = False
    if monitor:
        data["monitor"] = monitor
    if _given(flags, "trusted_keys"):
        data["trusted_keys"] = [*data.get("trusted_keys", []), *flags["trusted_keys"]]


def _apply_pipeline_flags(data: dict[str, Any], flags: dict[str, Any], *, from_file: bool,
                          ) -> str | None:
    """Lay the pipeline flags over the pipeline they name; return its name (None: no flags)."""
    pipelines: list[dict[str, Any]] = list(data.get("pipelines") or [])
    wanted = [k for k in (*PIPELINE_FLAGS, *HINT_FLAGS) if _given(flags, k)]
    name = flags.get("pipeline_name")
    target = _flag_target(pipelines, name)
    if not wanted:
        data["pipelines"] = pipelines
        if not from_file and not pipelines:
            raise ConfigError("give --bundle and --source (or --config FILE)")
        return None
    if target is None:
        if from_file and len(pipelines) > 1 and name is None:
            raise ConfigError("the config has several pipelines; say which with --pipeline")
        target = {"name": name or "default"}
        pipelines.append(target)
    for flag, key in PIPELINE_FLAGS.items():
        if _given(flags, flag):
            target[key] = _expanded(flag, flags[flag])
    hints = dict(target.get("model") or {})
    for flag in HINT_FLAGS:
        if _given(flags, flag):
            hints[flag] = (_number_list(flags[flag]) if flag.startswith("input_")
                           else _expanded(flag, flags[flag]))
    if hints:
        target["model"] = hints
    if not target.get("source"):
        raise ConfigError("give --source and --bundle (or --config FILE); without --bundle the "
                          "pipeline waits for its first model from deploy")
    data["pipelines"] = pipelines
    return str(target.get("name", "default"))


def _expanded(flag: str, value: Any) -> Any:
    """``~`` in a path flag, as a shell would have expanded it unquoted."""
    if flag in ("bundle", "labels") or (flag == "source" and str(value).startswith("~")):
        expanded = Path(str(value)).expanduser()
        return expanded if isinstance(value, Path) else str(expanded)
    return value


def _number_list(text: str) -> float | list[float]:
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{text!r} is not a number or a comma-separated list") from None
    if not values:
        raise ConfigError("empty --input-mean/--input-std")
    return values[0] if len(values) == 1 else values


def check_config_file(path: Path) -> list[str]:
    """Validate ``path`` fully (schema, sources, bundles) without loading models."""
    from .bundles.resolve import resolve_bundle
    from .sources import SourceError, SourceOptions, open_source

    config = load_config(path)
    problems: list[str] = []
    notes: list[str] = []
    try:
        config.mqtt.settings(config.device_id)
    except ValueError as exc:
        problems.append(f"{path}: mqtt: {exc}")
    for i, p in enumerate(config.pipelines):
        where = f"{path}: pipelines[{i}] ({p.name})"
        try:
            open_source(p.source, SourceOptions(base_dir=p.base_dir))
        except (SourceError, ValueError) as exc:
            problems.append(f"{where}: source: {exc}")
        if p.bundle is None or not p.bundle.exists():
            missing = f"bundle {p.bundle} does not exist yet" if p.bundle else "no bundle yet"
            notes.append(f"{where}: {missing}; the pipeline waits for one from deploy")
        elif p.bundle.is_dir():
            try:
                resolve_bundle(p.bundle, trusted_keys=config.trusted_keys)
            except Exception as exc:
                problems.append(f"{where}: bundle: {exc}")
    if problems:
        raise ConfigError("; ".join([*problems, *notes]))
    names = ", ".join(p.name for p in config.pipelines)
    return [f"{path}: ok — device {config.device_id}, {len(config.pipelines)} pipeline(s): {names}",
            *notes]
