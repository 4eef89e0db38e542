"""An input as discovery names it: a path (or URL) and its name below the root it was found in."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from igcli.names import printable

GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputRef:
    """An input path and its name below the root it was found in (mirrored by outputs)."""

    path: Path
    relpath: str

    @property
    def source(self) -> str:
        """The path as records and messages show it: undecodable bytes as ``\\xNN``."""
        return printable(str(self.path))
