"""Reading back the JSON-lines files igcli writes (results.jsonl)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator


def complete_lines(path: Path) -> Iterator[str]:
    """The lines of ``path``, streamed, without their newline. A last line without one was torn by a
    killed run and is left out. Lines end at newlines only: a record writes U+2028 and U+2029 as
    escapes, and str.splitlines would split at them."""
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            if not line.endswith("\n"):
                return
            yield line[:-1]
