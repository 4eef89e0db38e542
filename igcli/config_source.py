"""Reading a YAML config as plain data, remembering where each key stood in the file.

Locations let validation errors say ``configs/x.yaml:12``; duplicate keys, which PyYAML would
silently collapse, are refused here, and so are files over MAX_CONFIG_BYTES and documents that
aliases expand past MAX_VALUES values (a "billion laughs" bomb), before anything is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from igcli.errors import ConfigError

KeyPath = tuple[str, ...]
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; this is a runaway file
MAX_VALUES = 10_000  # scalars, lists and mappings in a document once its aliases are expanded
MAX_DEPTH = 64  # nesting levels


@dataclass
class ConfigSource:
    """Raw config data plus, for each key path, where it came from (``file:line`` or ``--set``)."""

    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[KeyPath, str] = field(default_factory=dict)
    name: str = "config"  # the file, for problems with no line of their own

    def origin(self, path: KeyPath) -> str:
        """The nearest known origin of ``path`` or of one of its parents; for a section that only
        --set made (``--set smoothgrad.samples=4``), the origin of its first key."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.origins:
                return self.origins[path[:end]]
        below = (origin for key, origin in self.origins.items() if path and key[: len(path)] == path)
        return next(below, self.name)


def read_yaml(path: Path) -> ConfigSource:
    """Parse ``path`` into a ConfigSource; YAML syntax errors become one-line ConfigErrors."""
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror or error})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: over {MAX_CONFIG_BYTES:,} bytes; is this really an igcli config?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start})") from None
    try:
        node, data = load_yaml(text, str(path))
    except yaml.YAMLError as error:
        raise ConfigError(_describe_yaml_error(path, error, text)) from None
    if data is None:
        return ConfigSource(name=str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, found {type(data).__name__}")
    source = ConfigSource(data=data, name=str(path))
    _collect_origins(node, (), path, source.origins)
    return source


def load_yaml(text: str, where: str) -> tuple[yaml.Node | None, Any]:
    """(node, data) of one YAML document, safely: the node graph is measured with its aliases
    expanded before any value is built, so a small file cannot ask for gigabytes."""
    loader = _DepthLimitedLoader(text)
    loader.where = where
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"{where}: YAML nested too deeply (over {MAX_DEPTH} levels)") from None
        if node is None:
            return None, None
        _expanded_size(node, where, {}, set(), 0)
        return node, loader.construct_document(node)
    finally:
        loader.dispose()


class _DepthLimitedLoader(yaml.SafeLoader):
    """SafeLoader that stops composing past MAX_DEPTH levels, before the parser's own recursion
    (1,000 levels of '[' took 4 s to refuse)."""

    where = "config"
    depth = 0

    def compose_node(self, parent, index):  # noqa: D102
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise ConfigError(f"{self.where}: YAML nested too deeply (over {MAX_DEPTH} levels)")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _expanded_size(node: yaml.Node, where: str, sizes: dict[int, int], open_nodes: set[int], depth: int) -> int:
    """How many values ``node`` stands for with every alias expanded; ConfigError past the budget."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise ConfigError(f"{where}: a YAML alias refers to a value that holds it; write the value out")
    if depth > MAX_DEPTH:
        raise ConfigError(f"{where}: YAML nested too deeply (over {MAX_DEPTH} levels)")
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    else:
        children = []
    open_nodes.add(id(node))
    total = 1
    for child in children:
        total += _expanded_size(child, where, sizes, open_nodes, depth + 1)
        if total > MAX_VALUES:
            raise ConfigError(f"{where}: YAML expands to over {MAX_VALUES:,} values (through aliases?); "
                              "an igcli config holds a few dozen")
    open_nodes.discard(id(node))
    sizes[id(node)] = total
    return total


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
    if not all(part.strip() for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: an empty part in the key; name it like baseline.kind=blur")
    try:
        value = load_yaml(raw, f"--set {key.strip()}")[1] if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return tuple(part.strip() for part in key.split(".")), value


def apply_override(source: ConfigSource, path: KeyPath, value: Any, origin: str) -> None:
    """Set ``path`` to ``value`` in place, creating sections as needed."""
    section = source.data
    for depth, part in enumerate(path[:-1], 1):
        child = section.get(part)
        if not isinstance(child, dict):
            # A scalar gives way to a section: `--set target.top_k=3` replaces `target: predicted`.
            child = section[part] = {}
            source.origins[path[:depth]] = origin
        section = child
    section[path[-1]] = value
    source.origins[path] = origin
