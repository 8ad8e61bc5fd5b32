"""Load YAML into pydantic models with errors a person can act on: file, line, key, "did you mean"."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from edge_runtime.errors import EdgeError

M = TypeVar("M", bound=BaseModel)
MAX_REPORTED = 3


class ConfigError(EdgeError):
    """A configuration file or value that cannot be used; one line naming key and line."""


def load_yaml_model(path: Path, model: type[M]) -> M:
    root, data = parse_yaml(path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(str(path), root, exc, model)) from None


def parse_yaml(path: Path) -> tuple[yaml.Node | None, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise ConfigError(f"{path}: line {line}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys (e.g. `device_id: pi-1`)")
    return root, data


def describe_errors(where: str, root: yaml.Node | None, exc: ValidationError,
                    model: type[BaseModel]) -> str:
    errors = exc.errors(include_url=False)
    parts = [_describe(root, err, model) for err in errors[:MAX_REPORTED]]
    more = len(errors) - MAX_REPORTED
    return f"{where}: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _describe(root: yaml.Node | None, error: ErrorDetails, model: type[BaseModel]) -> str:
    loc = tuple(p for p in error["loc"] if not _is_union_tag(p))
    line = _line_of(root, loc) if root is not None else None
    prefix = f"line {line}: " if line else ""
    return f"{prefix}{_dotted(loc)}: {_message(error, loc, model)}"


def _is_union_tag(part: int | str) -> bool:
    # pydantic inserts the union member's type name into the location; users never wrote it
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part in
                                      ("str", "int", "float", "bool", "list", "dict"))


def _message(error: ErrorDetails, loc: tuple[int | str, ...], model: type[BaseModel]) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return "unknown key" + did_you_mean(str(loc[-1]), known_keys(model, loc[:-1]))
    if kind == "missing":
        return "required key is missing"
    text = error["msg"].removeprefix("Value error, ")
    message = text[:1].lower() + text[1:]
    if kind == "literal_error" and isinstance(value, str):
        expected = re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))
        return message + f", got {value!r}" + did_you_mean(value, expected)
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return message + f", got {value!r}"
    return message


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def known_keys(model: type[BaseModel], parent: tuple[int | str, ...]) -> list[str]:
    current: type[BaseModel] = model
    for part in parent:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        nested = _model_in(field.annotation)
        if nested is None:
            return []
        current = nested
    return list(current.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(top level)"


def _line_of(root: yaml.Node, loc: tuple[int | str, ...]) -> int:
    node, line = root, root.start_mark.line + 1
    for part in loc:
        found = _child(node, part)
        if found is None:
            break
        marker, node = found
        line = marker.start_mark.line + 1
    return line


def _child(node: yaml.Node, part: int | str) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part], node.value[part]
    return None
