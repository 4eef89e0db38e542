"""Files appear whole or not at all: written to a temporary name beside them, then renamed."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
