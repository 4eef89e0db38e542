"""What an output folder holds from an earlier run, and what a new run does with it.

A run into a folder that holds an earlier igcli run replaces it: once the run completes, the files
the earlier run's records named and this run's do not (heatmaps of inputs since removed, region
images of a run with regions) are removed, so the folder holds what results.jsonl says and no more.
A run that does not complete removes nothing and keeps the list for the next run.

Only an igcli run's folder (its manifest.json says so) is cleaned, only below igcli's own output
folders, and never a name that leaves the folder or a file reached through a link. A folder that
holds files named as igcli's but no igcli manifest is not written into at all.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from igcli.data.urls import is_output_marker
from igcli.errors import UsageError
from igcli.results.atomic_files import write_bytes_atomic

log = logging.getLogger("igcli")
OWN_FOLDERS = frozenset({"heatmaps", "attributions", "records", "html", "regions"})
RUN_FILES = ("results.jsonl", "manifest.json", "report.html", "summary.json")
PENDING = ".igcli-unnamed"  # an unfinished run's list of earlier files no record names
TOP_LEVEL_OUTPUTS = frozenset({"summary", "results.parquet", "results.jsonl", "report.html", "summary.json"})


def inside(path: Path, out_dir: Path) -> bool:
    """Whether ``path`` (existing or not) stays inside ``out_dir`` once links on the way are followed."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(out_dir))


def is_run_folder(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a manifest.json that igcli wrote."""
    manifest = out_dir / "manifest.json"
    return manifest.is_file() and is_output_marker("manifest.json", lambda limit: _head(manifest, limit))


def check_output_folder(out_dir: Path) -> None:
    """UsageError where ``out_dir`` holds files named as a run's (results.jsonl, ...) but is no igcli
    run's folder (a run would overwrite someone's files), or where one of its outputs is a link that
    leads out of it (a run would write there)."""
    if not out_dir.is_dir():
        return
    for name in sorted(OWN_FOLDERS | TOP_LEVEL_OUTPUTS):
        if not inside(out_dir / name, out_dir):
            raise UsageError(f"{out_dir / name}: a link to {os.path.realpath(out_dir / name)}, outside the output "
                             "folder; igcli writes only inside -o: remove the link, or give another -o")
    if is_run_folder(out_dir):
        return
    taken = [name for name in RUN_FILES if (out_dir / name).is_file() and (out_dir / name).stat().st_size > 0]
    if taken:
        raise UsageError(f"{out_dir}: holds {', '.join(taken)} but no manifest.json of an igcli run, so a run would "
                         "overwrite them; give another -o, or move those files")


def named_outputs(records: Iterable[dict[str, Any]]) -> set[str]:
    """The output files ``records`` name, as relative POSIX paths below an own folder."""
    named = set()
    for record in records:
        outputs = record.get("outputs") if isinstance(record, dict) else None
        if isinstance(outputs, dict):
            named.update(name for name in outputs.values() if _own_file_name(name))
    return named


def earlier_outputs(out_dir: Path) -> set[str]:
    """The files an earlier run in ``out_dir`` named (in results.jsonl, or left by a run that did not
    complete); none where ``out_dir`` is not an igcli run's folder."""
    if not is_run_folder(out_dir):
        return set()
    named = named_outputs(_loads(line) for line in _lines(out_dir / "results.jsonl"))
    return named | {name for name in _lines(out_dir / PENDING) if _own_file_name(name)}


def settle_unnamed(out_dir: Path, names: set[str], complete: bool) -> None:
    """A complete run removes ``names`` (earlier files no record of it names); one that is not
    keeps the list in ``out_dir`` for the next run."""
    pending = out_dir / PENDING
    try:
        if complete:
            remove_unnamed(out_dir, names)
            pending.unlink(missing_ok=True)
        elif names:
            write_bytes_atomic(pending, "".join(f"{name}\n" for name in sorted(names)).encode())
    except OSError as error:
        log.warning("%s: cannot settle the earlier run's files (%s)", pending, error.strerror or error)


def remove_unnamed(out_dir: Path, names: set[str]) -> int:
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


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def _loads(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _head(path: Path, limit: int) -> bytes:
    with path.open("rb") as stream:
        return stream.read(limit)
