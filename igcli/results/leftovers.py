"""A run into a folder that holds an earlier run replaces it: once the run completes, the files the
earlier run's records named and this run's do not (heatmaps of inputs since removed, region images
of a run with regions) are removed, so the folder holds what results.jsonl says and no more.

Only files below igcli's own output folders that an earlier record named are touched; a name that
leaves the folder, or a file reached through a link, is left where it is.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

log = logging.getLogger("igcli")
OWN_FOLDERS = frozenset({"heatmaps", "attributions", "records", "html", "regions"})


def named_outputs(records: Iterable[dict[str, Any]]) -> set[str]:
    """The output files ``records`` name, as relative POSIX paths below an own folder."""
    named = set()
    for record in records:
        outputs = record.get("outputs") if isinstance(record, dict) else None
        if isinstance(outputs, dict):
            named.update(name for name in outputs.values() if _own_file_name(name))
    return named


def earlier_outputs(out_dir: Path) -> set[str]:
    """The output files the records of ``out_dir/results.jsonl`` name; none where it is missing."""
    try:
        text = (out_dir / "results.jsonl").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    return named_outputs(_loads(line) for line in text.splitlines())


def remove_leftovers(out_dir: Path, names: set[str]) -> int:
    """Remove the files ``names`` below ``out_dir``, and the folders that leaves empty; the count."""
    root = out_dir.resolve()
    removed = 0
    for name in sorted(names):
        path = out_dir / name
        try:
            if path.is_symlink() or not path.is_file() or not path.resolve().is_relative_to(root):
                continue
            path.unlink()
        except OSError as error:
            log.warning("%s: cannot remove this file of the earlier run (%s)", path, error.strerror or error)
            continue
        removed += 1
        _remove_empty_folders(path.parent, out_dir)
    if removed:
        log.info("%s: removed %d file(s) of the earlier run that this run's records do not name", out_dir, removed)
    return removed


def _own_file_name(name: Any) -> bool:
    if not isinstance(name, str) or "\\" in name or "\0" in name:
        return False
    parts = PurePosixPath(name).parts
    return len(parts) >= 2 and parts[0] in OWN_FOLDERS and not {"..", ".", "/"} & set(parts)


def _remove_empty_folders(folder: Path, out_dir: Path) -> None:
    while folder != out_dir and folder.is_relative_to(out_dir):
        try:
            os.rmdir(folder)
        except OSError:  # not empty, or not ours to remove
            return
        folder = folder.parent


def _loads(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None
