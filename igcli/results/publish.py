"""Outputs to a store: the run writes a local staging folder exactly as it writes any ``-o`` (atomic
renames, lock, resume, report), and a Publisher mirrors each file to the store as it completes.

- A file is uploaded as soon as write_atomic completes it (results/atomic_files.watching).
- ``results.jsonl`` and ``manifest.json`` cannot be appended to in an object store: at each
  checkpoint (a running manifest written, at most as often as the last checkpoint took) they are
  put whole, after every file their records name, so a reader of the store never meets a record
  whose files are missing.
- At the end, however the run ended (complete, --max-errors, a signal, an error), whatever is not
  yet in the store is put there, ``manifest.json`` last; then the staging folder is removed. If the
  store fails, the run stops and the staging folder is kept; the error names it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from igcli.errors import UsageError, first_line
from igcli.results.atomic_files import watching
from igcli.results.parquet import PARQUET_DIR
from igcli.results.store import OutputStore, StoreError, StoreLock, _signature

log = logging.getLogger("igcli")
UPLOAD_THREADS = 8  # uploads wait on the network, not the CPU
HEARTBEAT_SECONDS = 60.0
RECORDS, MANIFEST = "results.jsonl", "manifest.json"
_SNAPSHOT = ".igcli-results.snapshot"


@contextmanager
def staged_output(target: Path | OutputStore | None, resume: bool) -> Iterator[Path | None]:
    """The folder a run writes: ``target`` itself when local (or None), else a staging folder in
    the system temp dir mirrored to the store. ``resume`` first brings the store's earlier run
    into staging. A lock, or a store that cannot be written, is a UsageError before anything runs."""
    if not isinstance(target, OutputStore):
        yield target
        return
    lock = StoreLock(target)
    lock.acquire()
    staging: Path | None = None
    try:
        staging = Path(tempfile.mkdtemp(prefix="igcli-staging-")).resolve()
        publisher = Publisher(target, staging, lock)
        publisher.start(resume)
    except BaseException:
        lock.release()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        with watching(staging, publisher.written):
            yield staging
    except BaseException as error:
        publisher.close(error)
        raise
    publisher.close()


class Publisher:
    """Mirrors the staging folder ``staging`` to ``store`` (see the module's docstring)."""

    def __init__(self, store: OutputStore, staging: Path, lock: StoreLock):
        self.store, self.staging, self.lock = store, staging, lock
        self._uploads: list[Future] = []  # since the last checkpoint
        self._published: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime) put
        self._guard = threading.Lock()
        self._pool = ThreadPoolExecutor(UPLOAD_THREADS, "igcli-publish")
        self._checkpoints = ThreadPoolExecutor(1, "igcli-checkpoint")
        self._checkpoint: Future | None = None
        self._next_checkpoint = 0.0
        self._failure: StoreError | None = None
        self._failure_raised = False
        self._stopped = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="igcli-lock", daemon=True)

    def start(self, resume: bool) -> None:
        """Bring the earlier run in (``resume``) and remove the store's report and Parquet parts,
        as a local run removes its folder's (rebuilt as it goes); a failure is a UsageError: nothing ran."""
        try:
            if resume:
                for relative in self.store.fetch(self.staging, skip={"report.html", PARQUET_DIR + "/"}):
                    self._published[relative] = _signature(self.staging / relative)
                log.info("%s: %d file(s) of the earlier run brought in for --resume", self.store.url,
                         len(self._published))
            self.store.remove("report.html")
            self.store.remove_folder(PARQUET_DIR)  # every run writes its parts anew, as locally
        except Exception as error:  # noqa: BLE001 - each filesystem has its own errors
            raise UsageError(f"{self.store.url}: cannot read the earlier run ({first_line(error)}); check the URL "
                             "and its credentials") from None
        self._heartbeat.start()
        log.info("%s: staging the outputs in %s", self.store.url, self.staging)

    def written(self, path: Path) -> None:
        """write_atomic completed ``path`` in staging: upload it; a running manifest is a checkpoint,
        where a store failure met so far stops the run (raised once, in the run's own thread)."""
        relative = path.relative_to(self.staging).as_posix()
        if relative == MANIFEST:
            data = path.read_bytes()
            if json.loads(data).get("finished") is not None:
                return  # the final manifest: close() puts it last
            if self._failure is not None and not self._failure_raised:
                self._failure_raised = True
                raise self._failure
            self._checkpoint_if_due(data)
        elif not path.name.startswith(".igcli"):
            self._upload_later(path, relative)

    def _upload_later(self, path: Path, relative: str) -> None:
        future = self._pool.submit(self._upload, path, relative)
        future.add_done_callback(self._note)
        with self._guard:
            self._uploads.append(future)

    def _upload(self, path: Path, relative: str) -> None:
        try:
            signature = _signature(path)
        except FileNotFoundError:
            return  # removed since it was written
        if self._published.get(relative) == signature:
            return
        self.store.put_file(path, relative)
        self._published[relative] = signature

    def _checkpoint_if_due(self, manifest: bytes) -> None:
        if self._checkpoint is not None and not self._checkpoint.done() or time.monotonic() < self._next_checkpoint:
            return
        with self._guard:
            uploads, self._uploads = self._uploads, []
        snapshot = self.staging / _SNAPSHOT
        _copy_whole_lines(self.staging / RECORDS, snapshot)
        self._checkpoint = self._checkpoints.submit(self._put_checkpoint, uploads, snapshot, manifest)
        self._checkpoint.add_done_callback(self._note)

    def _put_checkpoint(self, uploads: list[Future], snapshot: Path, manifest: bytes) -> None:
        started = time.monotonic()
        for upload in uploads:
            upload.result()
        self.store.put_file(snapshot, RECORDS)
        self.store.put_bytes(manifest, MANIFEST)
        self._next_checkpoint = time.monotonic() + (time.monotonic() - started)  # at most half the time

    def close(self, error: BaseException | None = None) -> None:
        """Put everything not yet in the store, ``manifest.json`` last; remove the staging folder.
        When the store fails, keep it: StoreError (or a log line when ``error`` is on its way)."""
        self._stopped.set()
        if self._heartbeat.is_alive():
            self._heartbeat.join()
        failure = self._failure
        if failure is None and not isinstance(error, StoreError):
            if isinstance(error, KeyboardInterrupt):
                log.warning("putting the outputs in %s before stopping; interrupt again to leave them in %s",
                            self.store.url, self.staging)
            try:
                self._put_rest()
            except BaseException as caught:  # noqa: BLE001 - KeyboardInterrupt too: the staging is kept
                failure = self._failure = self._failure or self._as_store_error(caught)
        self._pool.shutdown(wait=failure is None, cancel_futures=True)
        self._checkpoints.shutdown(wait=failure is None, cancel_futures=True)
        self.lock.release()
        if failure is None and not isinstance(error, StoreError):
            shutil.rmtree(self.staging, ignore_errors=True)
            log.info("%s: %d file(s) in the store", self.store.url, len(self._published))
        elif failure is not None and error is None:
            raise failure
        elif failure is not None and not isinstance(error, StoreError):
            log.error("%s", failure)  # the run's own error is the one on its way

    def _put_rest(self) -> None:
        if self._checkpoint is not None:
            self._checkpoint.result()
        with self._guard:
            uploads, self._uploads = self._uploads, []
        for upload in uploads:
            upload.result()
        for relative in self._unpublished():
            self._upload_later(self.staging / relative, relative)
        for upload in self._uploads:
            upload.result()
        if self._failure is not None:
            raise self._failure
        for last in (RECORDS, MANIFEST):
            if (self.staging / last).is_file():
                self.store.put_file(self.staging / last, last)
                self._published[last] = _signature(self.staging / last)

    def _unpublished(self) -> list[str]:
        """Files of staging not in the store as they are now: anything written other than by
        write_atomic (or whose upload was never queued) is found here."""
        found = []
        for folder, _, names in os.walk(self.staging):
            for name in names:
                if name.startswith(".") and (name.startswith(".igcli") or name.endswith(".tmp")):
                    continue
                relative = (Path(folder) / name).relative_to(self.staging).as_posix()
                if relative not in (RECORDS, MANIFEST) and \
                        self._published.get(relative) != _signature(self.staging / relative):
                    found.append(relative)
        return sorted(found)

    def _note(self, future: Future) -> None:
        error = None if future.cancelled() else future.exception()
        if error is not None and self._failure is None:
            self._failure = self._as_store_error(error)

    def _as_store_error(self, error: BaseException) -> StoreError:
        if isinstance(error, StoreError):
            return error
        reason = "interrupted" if isinstance(error, KeyboardInterrupt) else first_line(error)
        return StoreError(f"{self.store.url}: cannot write to the store ({reason}); every output of the run is "
                          f"kept in {self.staging}: copy it there, and --resume finishes the run")

    def _beat(self) -> None:
        while not self._stopped.wait(HEARTBEAT_SECONDS):
            try:
                self.lock.refresh()
            except Exception as error:  # noqa: BLE001 - surfaces at the next checkpoint
                if self._failure is None:
                    self._failure = self._as_store_error(error)


def _copy_whole_lines(source: Path, target: Path) -> None:
    """Copy ``source`` up to its last line end: the writer only ever adds whole lines, but a
    snapshot must not end inside one whatever the timing."""
    whole = 0
    with open(target, "wb") as out:
        if source.is_file():
            with open(source, "rb") as stream:
                while block := stream.read(1 << 20):
                    out.write(block)
                    end = block.rfind(b"\n")
                    whole = out.tell() - len(block) + end + 1 if end >= 0 else whole
        out.truncate(whole)
