"""SHA-256 of files, read in blocks: what --resume keys and gradient-graph caches are made of."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

BLOCK = 1 << 20


def update_from_file(digest: Any, path: Path) -> None:
    """Feed the bytes of ``path`` to ``digest`` (a hashlib object), a block at a time."""
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(BLOCK), b""):
            digest.update(block)


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    update_from_file(digest, path)
    return digest.hexdigest()
