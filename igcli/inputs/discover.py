"""Expand files, folders and globs into a stable, streamed sequence of inputs."""
from __future__ import annotations

import glob
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TextIO

from ..errors import InputError

GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputRef:
    """An input path and its name below the root it was found in (mirrored by outputs)."""

    path: Path
    relpath: str


def read_input(ref: InputRef, kind: str) -> bytes:
    """The bytes of an input file; any failure to read it is one InputError line naming it."""
    try:
        return ref.path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{ref.path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{ref.path}: is a folder, not {kind}") from None
    except PermissionError:
        raise InputError(f"{ref.path}: permission denied; check the file's read permission") from None
    except OSError as error:  # a symlink loop, an I/O error
        raise InputError(f"{ref.path}: cannot read ({error.strerror or error})") from None


def discover_inputs(specs: Iterable[str], extensions: Iterable[str]) -> Iterator[InputRef]:
    """Yield inputs in a stable order: specs as given; folders recursively, sorted by name.

    Folders and globs keep only files with one of ``extensions``; a file named explicitly is
    always kept, so a missing or misnamed file is reported rather than silently skipped.
    """
    suffixes = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    for spec in specs:
        if spec == "-":  # newline-separated paths on stdin, for pipelines
            yield from discover_inputs(read_path_list(sys.stdin), extensions)
            continue
        path = Path(spec)
        if GLOB_CHARS & set(spec) and not path.exists():
            root = _static_prefix(spec)
            for match in sorted(glob.glob(spec, recursive=True)):
                if Path(match).is_file() and Path(match).suffix.lower() in suffixes:
                    yield InputRef(Path(match), Path(os.path.relpath(match, root)).as_posix())
        elif path.is_dir():
            yield from _walk(path, suffixes)
        else:
            yield InputRef(path, path.name)


def _walk(root: Path, suffixes: set[str]) -> Iterator[InputRef]:
    # followlinks=False: a symlinked folder loop cannot make the walk endless.
    for folder, subfolders, files in os.walk(root, followlinks=False):
        subfolders.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in suffixes:
                full = Path(folder) / name
                yield InputRef(full, full.relative_to(root).as_posix())


def _static_prefix(pattern: str) -> str:
    parts = Path(pattern).parts
    static = []
    for part in parts:
        if GLOB_CHARS & set(part):
            break
        static.append(part)
    return str(Path(*static)) if static else "."


def read_path_list(stream: TextIO) -> Iterator[str]:
    """Paths, one per line; blank lines are skipped, surrounding whitespace kept out."""
    for line in stream:
        if line.strip():
            yield line.rstrip("\r\n").strip()


def in_shard(ref: InputRef, index: int, count: int) -> bool:
    """Whether ``ref`` belongs to shard ``index`` of ``count``: a stable hash of its output name.

    Every input lands in exactly one shard, whatever the order or number of inputs, so a shard
    of a growing folder keeps the inputs it had.
    """
    return zlib.crc32(ref.relpath.encode("utf-8")) % count == index
