"""Files appear whole or not at all: written to a temporary name beside them, then renamed."""
from __future__ import annotations

import itertools
import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from igcli.names import printable, shorten

_serial = itertools.count()
NAME_MAX = 255  # bytes in one file name on ext4, XFS, btrfs, APFS, NTFS (UTF-16 units)
_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
_watchers: dict[Path, Callable[[Path], None]] = {}  # folder -> called with each file completed below it


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = _create_temporary(path)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if _watchers:
        _completed(path)


@contextmanager
def watching(folder: Path, on_written: Callable[[Path], None]) -> Iterator[None]:
    """Call ``on_written(path)`` (in the writing thread) for each file that write_atomic completes
    below ``folder``: results/publish.py mirrors a staged output folder to a store this way."""
    _watchers[folder] = on_written
    try:
        yield
    finally:
        _watchers.pop(folder, None)


def _completed(path: Path) -> None:
    for folder, on_written in list(_watchers.items()):
        if path.is_relative_to(folder):
            on_written(path)


def _create_temporary(path: Path) -> tuple[int, Path]:
    # Not tempfile.mkstemp: its files are private (0600) whatever the umask, so every output would
    # be, and its random names cost more than writing a heatmap (80 against 50 us a file here).
    # The process id and a counter make names unique; a name left by a killed run is skipped. A
    # long name is shortened (with a hash) so that the temporary one fits NAME_MAX too.
    while True:
        tail = f".{os.getpid()}-{next(_serial)}.tmp"
        budget = NAME_MAX - 1 - len(tail)
        name = path.name if len(os.fsencode(path.name)) <= budget else shorten(printable(path.name), budget)
        temporary = path.with_name(f".{name}{tail}")
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _BINARY, 0o666), temporary
        except FileExistsError:
            continue


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda stream: stream.write(data))


def remove_leftovers(folder: Path) -> int:
    """Delete the temporary files that a killed run left under ``folder``; returns how many."""
    removed = 0
    for leftover in folder.rglob(".*.tmp"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed
