"""Inputs named by URL (``file://``, ``memory://``, ``s3://``, ``gs://``...), through fsspec.

A URL names a file, a folder (every file below it with an input extension, sorted by name) or a
glob. Records keep the URL as the input's ``source``, and the path below the URL's folder as its
``relpath``, so outputs mirror the remote tree as they mirror a local one. A filesystem whose
package is not installed (s3fs, gcsfs) is one line naming the package. docs/scaling.md.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable, Iterator

from igcli.data.refs import GLOB_CHARS, InputRef
from igcli.errors import IgcliError, InputError, UsageError, first_line
from igcli.names import safe_relpath

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
OUTPUT_MARKERS = (".igcli.lock", "manifest.json")  # a folder holding one is an igcli output, not inputs
MANIFEST_MAX_BYTES = 8 * 1024 * 1024  # a larger manifest.json is a dataset's own file, not igcli's
ARCHIVES = ("zip", "tar", "libarchive")  # filesystems over one file, named after '::'


def is_output_marker(name: str, read: Callable[[int], bytes]) -> bool:
    """Whether the file ``name`` marks an igcli output folder: ``.igcli.lock``, or a
    ``manifest.json`` that igcli wrote (a JSON object with ``igcli`` and ``state``), not a
    dataset's own file of that name. ``read(n)`` gives at most ``n`` of the file's bytes."""
    if name == ".igcli.lock":
        return True
    if name != "manifest.json":
        return False
    try:
        data = read(MANIFEST_MAX_BYTES + 1)
        manifest = json.loads(data) if len(data) <= MANIFEST_MAX_BYTES else None
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and isinstance(manifest.get("igcli"), str) and "state" in manifest


def output_root_error(spec: str, folder: str, marker: str) -> UsageError:
    """The one line for an input folder (or a glob's folder) that is itself an igcli run's output."""
    subject = "an igcli run's output folder" if spec.rstrip("/") == folder.rstrip("/") else \
        f"{folder} is an igcli run's output folder"
    return UsageError(f"{spec}: {subject} ({marker} there), so its heatmaps and "
                      "summaries would be read as inputs; name the inputs' own folder or files inside it "
                      "instead, or move them out of it")


def is_url(spec: str) -> bool:
    """``scheme://...``; a Windows drive (``C:\\``) or a plain path is not."""
    return isinstance(spec, str) and _SCHEME.match(spec) is not None and len(_SCHEME.match(spec).group(1)) > 1


def url_filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path in it; UsageError where fsspec has no
    implementation for the scheme or its package is missing."""
    try:
        import fsspec
        from fsspec.core import url_to_fs
    except ImportError:
        raise UsageError(f"{url}: URLs need fsspec; pip install fsspec") from None
    scheme = _SCHEME.match(url).group(1)
    try:
        return url_to_fs(url)
    except OSError as error:  # zip://x with no archive opens the current folder; a chained target is missing
        if scheme in ARCHIVES and "::" not in url:
            raise UsageError(f"{url}: no archive named; a {scheme}:// URL names the archive after '::' "
                             f"({scheme}://path::archive.{scheme})") from None
        raise UsageError(f"{url}: cannot open its filesystem ({error.strerror or first_line(error)})") from None
    except ImportError as error:
        raise UsageError(f"{url}: the {scheme}:// filesystem needs a package that is not installed ({error}); "
                         f"pip install it (s3fs for s3://, gcsfs for gs://)") from None
    except ValueError:
        protocols = fsspec.available_protocols()
        if scheme.lower() in protocols:
            raise UsageError(f"{url}: URL schemes are lower case here; did you mean {scheme.lower()}://?") from None
        close = difflib.get_close_matches(scheme, protocols, n=1)
        common = [name for name in ("s3", "gs", "az", "memory", "file", "http", "https") if name in protocols]
        hint = f"did you mean {close[0]}://?" if close else f"known: {', '.join(common)} and {len(protocols) - len(common)} more"
        raise UsageError(f"{url}: fsspec knows no '{scheme}' filesystem; {hint}") from None


@dataclass(frozen=True)
class UrlRef(InputRef):
    """An input read through fsspec; ``path`` is its path in the filesystem (for its suffix)."""

    url: str = ""
    failure: str = ""  # why the URL could not be listed: reading it fails with this line

    @property
    def source(self) -> str:
        return self.url

    def read(self, kind: str, max_bytes: int) -> bytes:
        """The input's bytes; any failure is one InputError line naming the URL."""
        if self.failure:
            raise InputError(self.failure)
        try:
            fs, path = url_filesystem(self.url)
        except UsageError as error:
            raise InputError(str(error)) from None
        try:
            info = fs.info(path)
            if info.get("type") == "directory":
                raise InputError(f"{self.url}: is a folder, not {kind}")
            size = info.get("size")
            if size is not None and size > max_bytes:
                raise InputError(f"{self.url}: {size:,} bytes, over input.max_bytes ({max_bytes:,}); "
                                 "raise it with --set input.max_bytes=N if the file is right")
            with fs.open(path, "rb") as stream:
                data = stream.read(max_bytes + 1)
        except FileNotFoundError:
            raise InputError(f"{self.url}: file not found") from None
        except IgcliError:
            raise
        except Exception as error:  # noqa: BLE001 - each filesystem has its own errors (aiohttp's, botocore's)
            raise InputError(f"{self.url}: cannot read ({first_line(error)})") from None
        if len(data) > max_bytes:
            raise InputError(f"{self.url}: over input.max_bytes ({max_bytes:,}); raise it with --set input.max_bytes=N")
        return data


def url_inputs(spec: str, suffixes: set[str]) -> Iterator[UrlRef]:
    """The inputs a URL names: a file (kept whatever its extension, as a named local file is), a
    folder's files with one of ``suffixes`` sorted by path, or a glob's matches."""
    fs, path = url_filesystem(spec)
    scheme = spec[: spec.index("://") + 3]
    chain = spec[spec.index("::"):] if "::" in spec else ""  # zip://a.png::data.zip: refs keep the archive
    try:
        root, found = _listing(fs, path, spec)
    except IgcliError:
        raise
    except Exception as error:  # noqa: BLE001 - each filesystem has its own errors: the input fails alone
        name = PurePosixPath(path).name or "input"
        yield UrlRef(PurePosixPath(path), safe_relpath(name), spec, f"{spec}: cannot list ({first_line(error)})")
        return
    if found is None:
        yield _ref(fs, scheme, path, PurePosixPath(path).name, chain)
        return
    for name in found:
        if PurePosixPath(name).suffix.lower() in suffixes:
            yield _ref(fs, scheme, name, name[len(root):].lstrip("/") if name.startswith(root) else
                       PurePosixPath(name).name, chain)


def _listing(fs: Any, path: str, spec: str) -> tuple[str, list[str] | None]:
    """(the root, the files) a glob or a folder URL names; None for the files of a single file."""
    if GLOB_CHARS & set(path):
        root = _static_prefix(path)
        _refuse_output_root(fs, root, spec)
        return root, sorted(p for p in fs.glob(path) if fs.isfile(p))
    if fs.isdir(path):
        root = path.rstrip("/")
        _refuse_output_root(fs, root, spec)
        return root, _outside_outputs(fs, sorted(fs.find(path)), root)
    return path, None


def _refuse_output_root(fs: Any, root: str, spec: str) -> None:
    """UsageError where the folder named as inputs is itself an igcli output (docs/hostile-inputs.md)."""
    for marker in OUTPUT_MARKERS:
        name = f"{root}/{marker}" if root else marker
        if fs.isfile(name) and is_output_marker(marker, lambda n, name=name: fs.cat_file(name, start=0, end=n)):
            raise output_root_error(spec, root or '.', marker)


def _outside_outputs(fs: Any, paths: list[str], root: str) -> list[str]:
    """``paths`` but those in an igcli output folder below ``root`` (an earlier run's heatmaps
    are not inputs, as in a local folder: data/discover.py)."""
    outputs = {name.rsplit("/", 1)[0] for name in paths if PurePosixPath(name).name in OUTPUT_MARKERS
               and is_output_marker(PurePosixPath(name).name, lambda n, name=name: fs.cat_file(name, start=0, end=n))}
    outputs.discard(root)
    if not outputs:
        return paths
    return [name for name in paths if not any(parent in outputs for parent in _parents(name, root))]


def _parents(path: str, root: str) -> Iterator[str]:
    folder = path.rsplit("/", 1)[0]
    while folder.startswith(root + "/"):
        yield folder
        folder = folder.rsplit("/", 1)[0]


def _ref(fs: Any, scheme: str, path: str, relpath: str, chain: str = "") -> UrlRef:
    url = fs.unstrip_protocol(path) if hasattr(fs, "unstrip_protocol") else scheme + path
    return UrlRef(PurePosixPath(path), safe_relpath(relpath), url + chain)


def _static_prefix(pattern: str) -> str:
    """The folder part of a glob before its first wildcard."""
    head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    return head.rsplit("/", 1)[0] if "/" in head else ""
