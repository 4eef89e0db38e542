"""Reading back the JSON-lines files igcli writes (results.jsonl)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from igcli.errors import UsageError

RUN_FOLDER = "give the -o folder of an igcli explain run"


def complete_lines(path: Path) -> Iterator[str]:
    """The lines of ``path``, streamed, without their newline. A last line without one was torn by a
    killed run and is left out. Lines end at newlines only: a record writes U+2028 and U+2029 as
    escapes, and str.splitlines would split at them."""
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            if not line.endswith("\n"):
                return
            yield line[:-1]


def run_results(folder: Path) -> Path:
    """``folder``/results.jsonl; a UsageError that says whether the folder is missing, is a file,
    or holds no results.jsonl."""
    if not folder.exists():
        broken = " (a broken link)" if folder.is_symlink() else ""
        raise UsageError(f"{folder}: no such folder{broken}; {RUN_FOLDER}")
    if not folder.is_dir():
        raise UsageError(f"{folder}: a file, not a folder; {RUN_FOLDER}")
    results = folder / "results.jsonl"
    if not results.is_file():
        raise UsageError(f"{folder}: no results.jsonl in this folder; {RUN_FOLDER}")
    return results
