"""--resume: reuse the records of a previous run into the same folder where nothing they depend on changed.

A record's key hashes the run key (igcli's version, the resolved config and the bytes of every
file it names: model, labels, tokenizer, baseline, factory source, a ``pkg.mod`` factory's module
file included) with the input's own bytes. Inputs are matched by their resolved path, however a
run spelled it (``/abs/images`` or ``images``). A
rerun with --resume keeps a previous record when its key matches and the files it lists still
exist; anything else is computed again. Records of one input are written in one line group, so a
run killed mid-write leaves at most a torn last line, which is ignored.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from igcli import __version__
from igcli.config import PATH_KEYS, Config, resolved
from igcli.digests import update_from_file
from igcli.results.jsonl import complete_lines
from igcli.results.records import Failure

KEY_CHARS = 32


def run_key(config: Config) -> str:
    """What every record of this run depends on besides its input: igcli's own numbers too (a new
    version may compute them differently), the config, and the files it names."""
    digest = hashlib.sha256(f"igcli {__version__}\0".encode())
    settings = resolved(config)
    settings["output"].pop("format", None)  # records are the same in either format: --resume reuses them
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path in _named_files(config):
        digest.update(f"\0{path}\0".encode())
        digest.update(_content_digest(path).encode())
    return digest.hexdigest()


def record_key(run: str, input_digest: str) -> str:
    return hashlib.sha256(f"{run}:{input_digest}".encode()).hexdigest()[:KEY_CHARS]


def _named_files(config: Config) -> list[Path]:
    paths = []
    for section, key in PATH_KEYS:
        value = getattr(getattr(config, section), key, None)
        if value is not None:
            paths.append(Path(value))
    factory = config.model.factory
    if factory and ".py:" in factory:
        paths.append(Path(factory.rpartition(":")[0]))
    elif factory:
        source = _module_source(factory.rpartition(":")[0])
        if source is not None:
            paths.append(source)
    return paths


def _module_source(name: str) -> Path | None:
    """The source file of a factory's module (``pkg.mod``): the job imported it already, so this
    finds it without running anything new. Only that file is hashed, not its whole package."""
    module = sys.modules.get(name)
    origin = getattr(module, "__file__", None)
    if origin is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec is not None else None
    return Path(origin) if origin and os.path.isfile(origin) else None


def _content_digest(path: Path) -> str:
    """sha256 of a file's bytes; of every file's name and bytes for a folder (a Hugging Face model)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(f"\0{file.relative_to(path) if path.is_dir() else ''}\0".encode())
        try:
            update_from_file(digest, file)
        except OSError:
            digest.update(b"<unreadable>")  # loading the model reports it properly
    return digest.hexdigest()


@dataclass
class PreviousRun:
    """The reusable records of an earlier run, as the raw lines it wrote, by input."""

    out_dir: Path | None = None
    lines: dict[str, list[str]] = field(default_factory=dict)  # input -> its record lines
    keys: dict[str, str] = field(default_factory=dict)  # input -> the key they were made with
    files: dict[str, list[str]] = field(default_factory=dict)  # input -> the outputs its records name

    @classmethod
    def load(cls, out_dir: Path) -> PreviousRun:
        previous = cls(out_dir)
        try:
            for line in complete_lines(out_dir / "results.jsonl"):
                previous._add(line)
        except FileNotFoundError:
            return previous
        except UnicodeDecodeError:
            return cls(out_dir)  # not igcli's file: nothing in it is reused
        return previous

    def _add(self, line: str) -> None:
        """Take in one line of the earlier results.jsonl where it holds a record fit to reuse."""
        record = _parse(line)
        if record is None or record.get("error") is not None or not record.get("key"):
            return
        source = resolved_input(record["input"])
        if self.keys.get(source) != record["key"]:
            self.keys[source], self.lines[source], self.files[source] = record["key"], [], []
        self.lines[source].append(line)
        self.files[source].extend((record.get("outputs") or {}).values())

    def reusable(self, source: str, key: str) -> list[str] | None:
        """The record lines for ``source`` when made with ``key`` and their files are all there."""
        source = resolved_input(source)
        if self.keys.get(source) != key:
            return None
        if not all(os.path.isfile(self.out_dir / relative) for relative in self.files[source]):
            return None
        return self.lines[source]


def resolved_input(source: str) -> str:
    """A record's input as one spelling: absolute, links resolved; a .jsonl line keeps its ``:N``."""
    path, colon, line = source.rpartition(":")
    if colon and line.isdigit() and path:
        return f"{os.path.realpath(path)}:{line}"
    return os.path.realpath(source)


def _parse(line: str) -> dict[str, Any] | None:
    """A record fit to reuse: a mapping with the fields a run's totals read (others are recomputed)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("input"), str):
        return None
    target, completeness = record.get("target"), record.get("completeness")
    if record.get("error") is None and not (
            isinstance(target, dict) and "rank" in target and isinstance(completeness, dict)
            and {"converged", "rel_error"} <= completeness.keys() and isinstance(record.get("steps"), int)
            and isinstance(record.get("warnings"), list)):
        return None
    return record


@dataclass
class ChunkReuse:
    """What --resume can take over from ``previous`` for the chunks of the run whose key is ``run``."""

    previous: PreviousRun
    run: str  # the run key

    def lines(self, chunk: list[Any]) -> list[list[str]] | None:
        """Every item's previous record lines, or None. A chunk is reused whole or computed whole:
        batches mix the chunk's inputs, and float results depend (in the last bits) on what else
        is in a batch, so only whole chunks reproduce an uninterrupted run byte for byte."""
        if not self.previous.lines:
            return None
        found = []
        for item in chunk:
            lines = None if isinstance(item, Failure) else self.previous.reusable(
                item.source, record_key(self.run, item.digest))
            if lines is None:
                return None
            found.append(lines)
        return found
