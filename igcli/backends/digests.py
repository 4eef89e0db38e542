"""SHA-256 of model files and folders: what keys the gradient-graph cache and a graph's metadata."""
from __future__ import annotations

import hashlib
from pathlib import Path

from igcli.digests import file_sha256


def source_sha256(source: Path) -> str:
    """sha256 of a model file, or of every file's name and bytes in a model folder (Hugging Face)."""
    if not source.is_dir():
        return file_sha256(source)
    digest = hashlib.sha256()
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(f"\0{file.relative_to(source)}\0{file_sha256(file)}".encode())
    return digest.hexdigest()
