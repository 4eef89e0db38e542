"""Expand files, folders, globs and path lists into a stable, streamed sequence of inputs.

Each input's name below its root (its relpath) is made safe here (names.safe_relpath): outputs
mirror it, so it never holds ``..`` and always encodes as UTF-8. A file reached twice is yielded
once; igcli output folders inside an input folder are not walked (docs/hostile-inputs.md).
"""
from __future__ import annotations

import errno
import glob
import itertools
import logging
import os
import stat
import sys
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from igcli.data.refs import GLOB_CHARS, InputRef  # noqa: F401 - named here too
from igcli.data.urls import OUTPUT_MARKERS, is_output_marker, is_url, output_root_error, url_inputs
from igcli.errors import InputError, UsageError
from igcli.names import safe_relpath

log = logging.getLogger("igcli")
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # config input.max_bytes: the most igcli reads of one input file
MAX_PATH_LINE = 4096  # PATH_MAX: the longest line of a path list (stdin, --files-from) read as a path


class PathList(tuple):
    """Paths read from stdin or --files-from: their names keep their tree below the list's common
    folder, as a folder argument's do."""

    def __str__(self) -> str:
        return "the path list"


def read_input(ref: InputRef, kind: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of an input file; any failure to read it is one InputError line naming it.

    Opened without blocking and checked to be a regular file first, so a FIFO or a device (or a
    link to /dev/zero) fails at once; files over ``max_bytes`` are refused unread.
    """
    if hasattr(ref, "url"):  # read through fsspec (data/urls.py)
        return ref.read(kind, max_bytes)
    try:
        handle = os.open(ref.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise InputError(f"{ref.source}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{ref.source}: is a folder, not {kind}") from None
    except PermissionError:
        raise InputError(f"{ref.source}: permission denied; check the file's read permission") from None
    except OSError as error:  # a symlink loop, a name too long, an I/O error
        raise InputError(f"{ref.source}: cannot read ({error.strerror or error})") from None
    try:
        info = os.fstat(handle)
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"{ref.source}: is a folder, not {kind}")
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{ref.source}: not a regular file ({_file_kind(info.st_mode)}); not read")
        if info.st_size > max_bytes:
            raise InputError(f"{ref.source}: {info.st_size:,} bytes, over input.max_bytes ({max_bytes:,}); "
                             "raise it with --set input.max_bytes=N if the file is right")
        data = _read_at_most(handle, max_bytes + 1)
    except OSError as error:
        if error.errno == errno.EISDIR:
            raise InputError(f"{ref.source}: is a folder, not {kind}") from None
        raise InputError(f"{ref.source}: cannot read ({error.strerror or error})") from None
    finally:
        os.close(handle)
    if len(data) > max_bytes:  # it grew while read
        raise InputError(f"{ref.source}: over input.max_bytes ({max_bytes:,}); "
                         "raise it with --set input.max_bytes=N if the file is right")
    return data


def _read_at_most(handle: int, limit: int) -> bytes:
    parts, left = [], limit
    while left > 0:
        block = os.read(handle, min(left, 1 << 20))
        if not block:
            break
        parts.append(block)
        left -= len(block)
    return b"".join(parts)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def discover_inputs(specs: Iterable[str], extensions: Iterable[str], exclude: Path | None = None) -> Iterator[InputRef]:
    """Yield inputs in a stable order: specs as given; folders recursively, sorted by name.

    Folders and globs keep only files with one of ``extensions``; a file named explicitly is
    always kept, so a missing or misnamed file is reported rather than silently skipped.
    ``exclude`` (the output folder) and folders that hold an igcli output are not walked. A file
    reached twice (a folder and a file in it, or two links) is yielded the first time only.
    """
    suffixes = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    skip = _OutputFolders(exclude)
    seen: set[str] = set()
    for ref in _expand(specs, suffixes, skip):
        resolved = getattr(ref, "url", None) or os.path.realpath(ref.path)
        if resolved in seen:
            log.info("%s: reached twice; explained once", ref.source)
            continue
        seen.add(resolved)
        yield ref


def _expand(specs: Iterable[str], suffixes: set[str], skip: _OutputFolders) -> Iterator[InputRef]:
    for spec in specs:
        if isinstance(spec, PathList):
            yield from _path_list(spec, suffixes, skip)
            continue
        if spec == "-":  # newline-separated paths on stdin, for pipelines
            yield from _path_list(PathList(read_path_list(sys.stdin.buffer, "stdin")), suffixes, skip)
            continue
        if "://" in spec:
            if is_url(spec):
                yield from url_inputs(spec, suffixes)
                continue
        path = Path(spec)
        # os.path's tests, not Path's: a name too long for the file system is False, not an OSError.
        if GLOB_CHARS & set(spec) and not os.path.exists(spec):
            yield from _glob(spec, suffixes, skip)
        elif os.path.isdir(spec):
            yield from _walk(path, suffixes, skip)
        else:
            yield InputRef(path, safe_relpath(path.name))


def _glob(pattern: str, suffixes: set[str], skip: _OutputFolders) -> Iterator[InputRef]:
    # Names are taken below the pattern's static prefix once both are normalised, so a `..` after
    # a wildcard cannot climb out: 'a/*/../../b/x.png' is 'b/x.png' below '.'.
    root = os.path.normpath(_static_prefix(pattern))
    skip.refuse_as_input(root, pattern)
    for match in sorted(glob.glob(pattern, recursive=True)):
        normal = os.path.abspath(match)
        base = os.path.commonpath([os.path.abspath(root), normal])
        if os.path.isdir(match) or Path(match).suffix.lower() not in suffixes or skip.holds(normal, base):
            continue
        yield InputRef(Path(match), safe_relpath(Path(os.path.relpath(normal, base)).as_posix()))


def _walk(root: Path, suffixes: set[str], skip: _OutputFolders) -> Iterator[InputRef]:
    skip.refuse_as_input(root, str(root))
    # followlinks=False: a symlinked folder loop cannot make the walk endless.
    for folder, subfolders, files in os.walk(root, followlinks=False):
        subfolders[:] = sorted(name for name in subfolders if not skip.is_output(Path(folder) / name))
        for name in sorted(files):
            if Path(name).suffix.lower() in suffixes:
                full = Path(folder) / name
                yield InputRef(full, safe_relpath(full.relative_to(root).as_posix()))


def _path_list(paths: PathList, suffixes: set[str], skip: _OutputFolders) -> Iterator[InputRef]:
    """Files named in a list keep their tree below the files' common folder (two 0001.png in cats/
    and dogs/ stay apart); folders and globs in it expand as they would as arguments."""
    files = {path for path in paths if not (GLOB_CHARS & set(path) and not os.path.exists(path))
             and not os.path.isdir(path)}
    root = common_folder(sorted(files))
    for path in paths:
        if path in files:
            absolute = os.path.abspath(path)
            yield InputRef(Path(path), safe_relpath(Path(os.path.relpath(absolute, root)).as_posix()))
        else:
            yield from _expand([path], suffixes, skip)


def common_folder(paths: list[str]) -> str:
    """The deepest folder that holds every one of ``paths`` (absolute; relative ones from the cwd)."""
    if not paths:
        return os.getcwd()
    return os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in paths])


class _OutputFolders:
    """Which folders are igcli outputs, not inputs: ``exclude`` and any that holds a marker."""

    def __init__(self, exclude: Path | None):
        self.exclude = os.path.realpath(exclude) if exclude is not None else None
        self._known: dict[str, bool] = {}

    def is_output(self, folder: Path | str) -> bool:
        folder = str(folder)
        if folder not in self._known:
            own = self.exclude is not None and os.path.realpath(folder) == self.exclude
            marker = None if own else _marker(folder)
            if marker is not None:
                log.warning("%s: skipped, an igcli run's output folder (%s there); its files are not read as inputs",
                            folder, marker)
            self._known[folder] = own or marker is not None
        return self._known[folder]

    def refuse_as_input(self, root: Path | str, spec: str) -> None:
        """UsageError where the folder walked for inputs is the output folder: the next run would
        explain this run's heatmaps."""
        if self.exclude is not None and os.path.realpath(root) == self.exclude:
            raise UsageError(f"{spec}: the inputs' folder is also the output folder (-o), so a rerun would read "
                             f"its heatmaps as inputs; give -o a folder of its own, e.g. {Path(root) / 'explained'}")
        marker = _marker(str(root))
        if marker is not None:
            raise output_root_error(spec, str(root), marker)

    def holds(self, path: str, root: str) -> bool:
        """Whether a folder above ``path`` and below ``root`` (both absolute) is an output folder."""
        folder = os.path.dirname(path)
        while folder != root and folder.startswith(root):
            if self.is_output(folder):
                return True
            folder = os.path.dirname(folder)
        return False


def _marker(folder: str) -> str | None:
    """The igcli output marker ``folder`` holds (data/urls.py is_output_marker), or None."""
    for marker in OUTPUT_MARKERS:
        path = os.path.join(folder, marker)
        if os.path.isfile(path) and is_output_marker(marker, lambda n, path=path: _read_head(path, n)):
            return marker
    return None


def _read_head(path: str, limit: int) -> bytes:
    with open(path, "rb") as stream:
        return stream.read(limit)


def _static_prefix(pattern: str) -> str:
    parts = Path(pattern).parts
    static = []
    for part in parts:
        if GLOB_CHARS & set(part):
            break
        static.append(part)
    return str(Path(*static)) if static else "."


def read_path_list(stream: BinaryIO, origin: str) -> Iterator[str]:
    """Paths, one per line, from a byte stream (a file, a pipe, stdin's buffer); blank lines are
    skipped, surrounding whitespace kept out. Bytes that are not UTF-8 stay as surrogateescape
    decodes them, as in a file name read from the disk. A line over PATH_MAX bytes (``/dev/zero``)
    or holding a NUL is a UsageError naming ``origin`` and the line: nothing is read without end."""
    for number in itertools.count(1):
        line = stream.readline(MAX_PATH_LINE + 2)
        if not line:
            return
        path = line.rstrip(b"\r\n")
        if len(path) > MAX_PATH_LINE:
            raise UsageError(f"{origin}: line {number} is over {MAX_PATH_LINE} bytes (PATH_MAX), so not a path; "
                             "give one path per line")
        if b"\0" in path:
            raise UsageError(f"{origin}: line {number} holds a NUL byte, which no path can; give one path per "
                             "line (find -print, not -print0)")
        text = os.fsdecode(path).strip()
        if text:
            yield text


def in_shard(ref: InputRef, index: int, count: int) -> bool:
    """Whether ``ref`` belongs to shard ``index`` of ``count``: a stable hash of its output name.

    Every input lands in exactly one shard, whatever the order or number of inputs, so a shard
    of a growing folder keeps the inputs it had. (crc32, not pipeline/chunks.py's name_hash:
    another hash would move inputs between shards already written.)
    """
    return zlib.crc32(ref.relpath.encode("utf-8")) % count == index
