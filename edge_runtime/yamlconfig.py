"""Load YAML into pydantic models with errors a person can act on: file, line, key, "did you mean"."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
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


def parse_yaml(path: Path, *, what: str = "config", error: type[EdgeError] = ConfigError,
               example: str = "`device_id: pi-1`", duplicates: bool = False,
               ) -> tuple[yaml.Node | None, Any]:
    """The YAML mapping in ``path`` and its node tree (for line numbers); ``error`` (one line,
    naming the file and the line) when it cannot be read or is not a mapping. With
    ``duplicates`` a key given twice in one mapping is an error too."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise error(f"{path}: line {line}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict) or (duplicates and root is None):
        raise error(f"{path}: the {what} must be a mapping of keys (e.g. {example})")
    if duplicates and root is not None:
        _check_duplicate_keys(path, root, error)
    return root, data


def _check_duplicate_keys(path: Path, node: yaml.Node, error: type[EdgeError]) -> None:
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(path, item, error)
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key, value in node.value:
        line = key.start_mark.line + 1
        if isinstance(key, yaml.ScalarNode) and key.value in seen:
            raise error(f"{path}: line {line}: duplicate key {key.value!r} "
                        f"(first at line {seen[key.value]})")
        if isinstance(key, yaml.ScalarNode):
            seen[key.value] = line
        _check_duplicate_keys(path, value, error)


def describe_errors(where: str, root: yaml.Node | None, exc: ValidationError,
                    model: type[BaseModel], hidden: Iterable[str] = ()) -> str:
    """One line for up to three validation errors, each with its YAML line and dotted key.

    An error whose context names a ``key`` (a dotted path below its location) points at that
    key; ``hidden`` fields are never suggested as "did you mean".
    """
    errors = exc.errors(include_url=False)
    parts = [_describe(root, err, model, tuple(hidden)) for err in errors[:MAX_REPORTED]]
    more = len(errors) - MAX_REPORTED
    return f"{where}: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _describe(root: yaml.Node | None, error: ErrorDetails, model: type[BaseModel],
              hidden: tuple[str, ...]) -> str:
    loc = tuple(p for p in error["loc"] if not _is_union_tag(p))
    key = (error.get("ctx") or {}).get("key")
    if isinstance(key, str) and key:
        loc = loc + tuple(key.split("."))
    line = _line_of(root, loc) if root is not None else None
    prefix = f"line {line}: " if line else ""
    return f"{prefix}{_dotted(loc)}: {_message(error, loc, model, hidden)}"


def _is_union_tag(part: int | str) -> bool:
    # pydantic inserts the union member's type name into the location; users never wrote it
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part in
                                      ("str", "int", "float", "bool", "list", "dict"))


def _message(error: ErrorDetails, loc: tuple[int | str, ...], model: type[BaseModel],
             hidden: tuple[str, ...] = ()) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        known = [k for k in known_keys(model, loc[:-1]) if k not in hidden]
        return "unknown key" + did_you_mean(str(loc[-1]), known)
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


def one_of(what: str, choices: Iterable[str]) -> Callable[[str], str]:
    """A pydantic validator accepting only ``choices`` (read from their registry when called)."""

    def check(value: str) -> str:
        known = list(choices)
        if value not in known:
            raise ValueError(f"{what} must be one of {', '.join(known)}, got {value!r}"
                             + did_you_mean(value, known))
        return value

    return check


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
    """Line of the deepest key of ``loc`` present in the YAML (the parent's, if it is missing)."""
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
