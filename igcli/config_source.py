"""Reading a YAML config as plain data, remembering where each key stood in the file.

Locations let validation errors say ``configs/x.yaml:12``; duplicate keys, which PyYAML would
silently collapse, are refused here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

KeyPath = tuple[str, ...]


@dataclass
class ConfigSource:
    """Raw config data plus, for each key path, where it came from (``file:line`` or ``--set``)."""

    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[KeyPath, str] = field(default_factory=dict)
    name: str = "config"  # the file, for problems with no line of their own

    def origin(self, path: KeyPath) -> str:
        """The nearest known origin of ``path`` or of one of its parents."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.origins:
                return self.origins[path[:end]]
        return self.name


def read_yaml(path: Path) -> ConfigSource:
    """Parse ``path`` into a ConfigSource; YAML syntax errors become one-line ConfigErrors."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config ({error})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(_describe_yaml_error(path, error, text)) from None
    if data is None:
        return ConfigSource(name=str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, found {type(data).__name__}")
    source = ConfigSource(data=data, name=str(path))
    _collect_origins(node, (), path, source.origins)
    return source


def _describe_yaml_error(path: Path, error: yaml.YAMLError, text: str) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    lines = text.splitlines()
    if mark is not None and mark.line < len(lines) and "\t" in lines[mark.line]:
        return f"{where}: tab character in YAML; indent with spaces instead"
    return f"{where}: invalid YAML ({problem}); fix the syntax on that line"


def _collect_origins(node: yaml.Node, prefix: KeyPath, path: Path, origins: dict[KeyPath, str]) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        line = key_node.start_mark.line + 1
        if key in seen:
            dotted = ".".join(prefix + (key,))
            raise ConfigError(
                f"{path}:{line}: duplicate key '{dotted}' (first at line {seen[key]}); keep one of them"
            )
        seen[key] = line
        origins[prefix + (key,)] = f"{path}:{line}"
        _collect_origins(value_node, prefix + (key,), path, origins)


def parse_override(text: str) -> tuple[KeyPath, Any]:
    """``a.b=value`` -> (("a", "b"), value), the value parsed as YAML (numbers, lists, ...)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set steps=64")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return tuple(part.strip() for part in key.split(".")), value


def apply_override(source: ConfigSource, path: KeyPath, value: Any, origin: str) -> None:
    """Set ``path`` to ``value`` in place, creating sections as needed."""
    section = source.data
    for part in path[:-1]:
        child = section.get(part)
        if not isinstance(child, dict):
            # A scalar gives way to a section: `--set target.top_k=3` replaces `target: predicted`.
            child = section[part] = {}
        section = child
    section[path[-1]] = value
    source.origins[path] = origin
