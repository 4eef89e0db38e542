"""An output folder in an fsspec store (``s3://``, ``gs://``, ``memory://``...): its keys, how a
file is put there whole, and the lock that keeps a second run out.

A run never writes to the store directly: it writes a local staging folder as it would any ``-o``,
and results/publish.py mirrors the files there as they complete. docs/scaling.md says what a
reader of the store sees, per filesystem.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from igcli.data.urls import is_url, url_filesystem
from igcli.errors import IgcliError, UsageError, first_line

log = logging.getLogger("igcli")

# Filesystems whose put shows readers the whole object or nothing (an S3 PUT or multipart upload,
# a GCS upload, an Azure block list, a memory file are visible only once complete): a file goes
# straight to its key. Elsewhere (sftp, ftp, hdfs, smb, webdav...) a write is visible while in
# progress, so it goes to a temporary key beside the final one and is then moved there.
ATOMIC_PUT = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"})
LOCK_KEY = ".igcli.lock"
STALE_SECONDS = 300.0  # a lock not refreshed for this long belongs to a run that died
_serial = itertools.count()
_SCHEME_COMPONENT = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]+):")  # "s3:" as a path's first component


class StoreError(IgcliError):
    """The store failed mid-run; the staged outputs are kept and the message says where."""


def output_target(text: str, writable: bool = True) -> Path | OutputStore:
    """``-o``: a local folder (a path, or a ``file://`` URL), or a folder in another fsspec store.
    An unknown scheme, or one whose package is missing, is a UsageError naming the pip fix; so is
    a store that cannot take writes (zip://, http://) unless only read (``writable`` False)."""
    if not text.strip():  # Path("") is the current folder: outputs would land among the user's files
        raise UsageError(f"-o {text!r}: an empty folder name; give -o a folder, e.g. -o out/")
    if not is_url(text):
        if text.startswith("file:/"):  # RFC 8089's short form: file:/tmp/x is /tmp/x
            return Path(text[len("file:"):])
        _refuse_missing_slash(text)
        return Path(text)
    fs, path = url_filesystem(text)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        return Path(path)
    if writable and _read_only(fs):
        raise UsageError(f"{text}: the {protocols[0]}:// filesystem here is read-only, so igcli cannot write there; "
                         "give a local folder or a store that takes writes (s3://, gs://, memory://...)")
    return OutputStore(text.rstrip("/"), fs, path.rstrip("/"))


def _read_only(fs: Any) -> bool:
    """An archive opened for reading (zip://, tar://) or plain HTTP: fsspec can read them, not write."""
    from fsspec.archive import AbstractArchiveFileSystem

    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    archive = isinstance(fs, AbstractArchiveFileSystem) and getattr(fs, "mode", "r") == "r"
    return archive or bool(protocols & {"http", "https"})


def _refuse_missing_slash(text: str) -> None:
    """``s3:/bkt/x`` would be a local folder ``s3:``: a UsageError where the first component is
    a scheme fsspec knows. fsspec is imported only for such a text."""
    match = _SCHEME_COMPONENT.match(text)
    if match is None:
        return
    try:
        import fsspec
    except ImportError:
        return
    scheme = match.group(1)
    if scheme.lower() in fsspec.available_protocols():
        url = f"{scheme}://{text[len(scheme) + 1:].lstrip('/')}"
        raise UsageError(f"-o {text}: looks like a URL without its '//'; write {url} (or ./{text} for a local folder)")


@contextmanager
def run_folder(text: str, only: tuple[str, ...] = ("",), write_back: bool = False) -> Iterator[Path]:
    """An explain run's folder, named by path or URL, as a local folder: a store's run (its files
    starting with one of ``only``) is brought into a temp folder, removed after; ``write_back``
    puts the files made or changed there back in the store (``igcli summary``)."""
    target = output_target(text, writable=write_back)
    if isinstance(target, Path):
        yield target
        return
    folder = Path(tempfile.mkdtemp(prefix="igcli-run-"))
    try:
        try:
            fetched = target.fetch(folder, skip=set(), only=only)
        except Exception as error:  # noqa: BLE001 - each filesystem has its own errors
            raise UsageError(f"{text}: cannot read the run ({first_line(error)}); check the URL and its "
                             "credentials") from None
        if "results.jsonl" not in fetched:
            raise UsageError(f"{text}: no results.jsonl there; give the -o of an igcli explain run")
        before = {relative: _signature(folder / relative) for relative in fetched}
        yield folder
        if write_back:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                relative = path.relative_to(folder).as_posix()
                if before.get(relative) == _signature(path) or path.name.startswith("."):
                    continue
                try:
                    target.put_file(path, relative)
                except Exception as error:  # noqa: BLE001 - each filesystem has its own errors
                    raise StoreError(f"{target.url}/{relative}: cannot write to the store "
                                     f"({first_line(error)})") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def output_folder(target: Path | OutputStore) -> Iterator[Path]:
    """A folder to write a command's outputs in: ``target`` when local; for a store, a temp folder
    whose files are put there (those in subfolders first, so a page never names a missing
    picture) when the block ends without an error, then removed."""
    if isinstance(target, Path):
        yield target
        return
    folder = Path(tempfile.mkdtemp(prefix="igcli-out-"))
    try:
        yield folder
        files = [p.relative_to(folder) for p in folder.rglob("*") if p.is_file()]
        for relative in sorted(files, key=lambda path: (len(path.parts) == 1, path.as_posix())):
            try:
                target.put_file(folder / relative, relative.as_posix())
            except Exception as error:  # noqa: BLE001 - each filesystem has its own errors
                raise StoreError(f"{target.url}/{relative.as_posix()}: cannot write to the store "
                                 f"({first_line(error)})") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class OutputStore:
    """The folder ``root`` of filesystem ``fs``, named ``url`` on the command line."""

    url: str
    fs: Any
    root: str

    @property
    def atomic_put(self) -> bool:
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else self.fs.protocol
        return any(protocol in ATOMIC_PUT for protocol in protocols)

    def key(self, relative: str) -> str:
        """The key of ``relative`` (a path below the folder): never outside the folder."""
        if any(part in ("", ".", "..") for part in relative.split("/")):
            raise ValueError(f"{relative!r} is not a path below the output folder")
        return f"{self.root}/{relative}"

    def put_file(self, local: Path, relative: str) -> None:
        """Upload ``local`` to ``relative``, whole or not at all as readers see it."""
        self._put(relative, lambda key: self.fs.put_file(os.fspath(local), key))

    def put_bytes(self, data: bytes, relative: str) -> None:
        self._put(relative, lambda key: self.fs.pipe_file(key, data))

    def _put(self, relative: str, write) -> None:
        key = self.key(relative)
        if self.atomic_put:
            write(key)
            return
        parent, name = key.rsplit("/", 1)
        temporary = f"{parent}/.{name}.{os.getpid()}-{next(_serial)}.tmp"
        try:
            write(temporary)
            self.fs.mv(temporary, key)
        except BaseException:
            try:
                self.fs.rm_file(temporary)
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
            raise

    def remove(self, relative: str) -> None:
        """Delete ``relative`` where it exists."""
        key = self.key(relative)
        if self.fs.exists(key):
            self.fs.rm_file(key)

    def remove_folder(self, relative: str) -> None:
        """Delete every key below ``relative``."""
        key = self.key(relative)
        if self.fs.exists(key):
            self.fs.rm(key, recursive=True)

    def fetch(self, folder: Path, skip: set[str], only: tuple[str, ...] = ("",)) -> list[str]:
        """Download every file of the store's folder (but ``skip``, where a name ending in "/" skips
        a folder, the lock and temporary keys;
        and only paths starting with one of ``only``) to the same place below ``folder``; returns
        their relative paths. A key that would land outside ``folder`` is left there, with a warning."""
        try:
            keys = self.fs.find(self.root)
        except FileNotFoundError:
            return []
        relatives, remote, local = [], [], []
        for key in sorted(keys):
            relative = key[len(self.root) + 1:] if key.startswith(self.root + "/") else None
            name = PurePosixPath(relative or "").name
            temporary = name.startswith(".") and name.endswith(".tmp")
            skipped = relative in skip or any(relative.startswith(s) for s in skip if s.endswith("/"))
            if not relative or skipped or name == LOCK_KEY or temporary or not relative.startswith(only):
                continue
            try:
                self.key(relative)
            except ValueError:
                log.warning("%s/%s: not a path igcli writes; left in the store", self.url, relative)
                continue
            relatives.append(relative)
            remote.append(key)
            local.append(os.fspath(folder / relative))
        for path in local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        if remote:
            self.fs.get(remote, local)
        return relatives


class StoreLock:
    """One run at a time per store folder: ``.igcli.lock`` names the run holding it (host, pid)
    and when it last said it was alive. Object stores have no flock; the lock is created with
    ``mode="xb"`` (a conditional put on S3, exclusive where the filesystem supports it, else a check
    then a write: two runs starting in the same instant may both get it). A lock that is not
    refreshed for STALE_SECONDS, or whose process is gone from this host, is taken over."""

    def __init__(self, store: OutputStore):
        self.store = store
        self.key = store.key(LOCK_KEY)
        self.run = uuid.uuid4().hex
        self.held = False

    def acquire(self) -> None:
        """Take the lock, or a UsageError (exit 2) naming the holder, or why the store cannot be written."""
        url = self.store.url
        try:
            if self.store.fs.isfile(self.store.root):
                raise UsageError(f"{url}: -o names a file, not a folder; give -o a folder (new or igcli's)")
            try:
                with self.store.fs.open(self.key, "xb") as stream:
                    stream.write(self._body())
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not _stale(holder):
                    raise UsageError(
                        f"{url}: another igcli run (host {holder.get('host', '?')}, pid {holder.get('pid', '?')}) "
                        f"is writing here; wait for it to end, or give this run another -o (if it is gone, "
                        f"delete {url}/{LOCK_KEY})") from None
                log.warning("%s: taking over the lock of a run that ended without releasing it", url)
                self.store.fs.pipe_file(self.key, self._body())
        except IgcliError:
            raise
        except Exception as error:  # noqa: BLE001 - each filesystem has its own errors: one line for all
            raise UsageError(f"{url}: cannot write to the store ({first_line(error)}); check the URL and its "
                             "credentials, or choose another -o") from None
        self.held = True

    def refresh(self) -> None:
        """Say this run is still alive; StoreError when another run took the lock meanwhile."""
        holder = self._holder()
        if holder is not None and holder.get("run") != self.run:
            raise StoreError(f"{self.store.url}: another run (host {holder.get('host', '?')}) took over the lock")
        self.store.fs.pipe_file(self.key, self._body())

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            holder = self._holder()
            if holder is None or holder.get("run") == self.run:
                self.store.fs.rm_file(self.key)
        except Exception as error:  # noqa: BLE001 - a lock left behind goes stale; say so, do not fail the run
            log.warning("%s/%s: cannot remove the lock (%s); it goes stale in %d s", self.store.url, LOCK_KEY,
                        first_line(error), STALE_SECONDS)

    def _body(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "run": self.run,
                           "alive": time.time()}).encode()

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.store.fs.cat_file(self.key))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # not igcli's lock body: stale unless fresh by its time, which it lacks
        return holder if isinstance(holder, dict) else {}


def _stale(holder: dict[str, Any]) -> bool:
    alive = holder.get("alive")
    if not isinstance(alive, (int, float)) or time.time() - alive > STALE_SECONDS:
        return True
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int) and os.name != "nt":
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False
