"""Write each Attribution as it arrives: heatmaps, arrays, JSON records, the JSONL stream.

Output names mirror the inputs' relative paths: ``heatmaps/<relpath>.png`` (``html/<relpath>.html``
for text) and so on, with ``.top<k>`` before the extension for top-k targets.
"""
from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, Callable, TextIO

import numpy as np

from igcli.config import OutputSection
from igcli.errors import IgcliError, ReaderGone, UsageError
from igcli.names import printable
from igcli.results.atomic_files import write_bytes_atomic
from igcli.results.earlier_run import earlier_outputs, inside, named_outputs, settle_unnamed
from igcli.results.heatmap import outline_region, render_bare, render_overlay, signed_map
from igcli.results.parquet import PARQUET_DIR, ParquetParts, remove_parts
from igcli.results.pipes import drop_closed_stream
from igcli.results.png import png_bytes
from igcli.results.records import Attribution, Failure, TextSample
from igcli.results.regions_view import region_images
from igcli.results.report import Thumbnails, write_report
from igcli.results.summary import SummaryBuilder
from igcli.results.text_view import render_ansi, render_html

log = logging.getLogger("igcli")
MAX_PENDING = 64  # inputs whose files may be in the writers' hands at once: bounds memory
# Errors that an output's name causes (too long, bytes the file system refuses), not the disk.
NAME_ERRORS = {errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL}
CHUNK_END = ([], [], 0)  # queued after a chunk's groups (RunWriter.end_chunk): no lines of its own


def writer_threads(asked: int | None = None) -> int:
    """Threads that write files beside the compute: ``asked``, else two with more than 2 cores and
    none on 2, where torch already keeps both busy (docs/performance.md)."""
    if asked is not None:
        return asked
    return 2 if (os.cpu_count() or 1) > 2 else 0


class OutputError(IgcliError):
    """An output file could not be written (disk full, permissions); the run stops."""


class RunWriter:
    """All outputs of one run. ``out_dir`` None writes only the JSONL stream."""

    def __init__(self, out_dir: Path | None, options: OutputSection, jsonl: str | None = None,
                 show: TextIO | None = None, threads: int | None = None, manifest_every: float = 1.0):
        self.out_dir, self.options, self.show = out_dir, options, show
        self.on_failed_late: Callable[[int], None] | None = None  # records that failed as their files were written
        self.streams: list[TextIO] = []
        self._owned: list[TextIO] = []
        self._manifest_written = time.monotonic()
        self._manifest_every = manifest_every  # seconds between rewrites of the running manifest
        # Encoding and writing files overlap the next chunk's compute (Pillow and file I/O release
        # the GIL); record lines still go out in input order, each after its files are on disk.
        threads = writer_threads(threads)
        self._pool = ThreadPoolExecutor(threads, "igcli-writer") if out_dir is not None and threads else None
        self._pending: deque[Future] = deque()
        # The report's thumbnails, made while the run holds each image: made from the files at
        # the end they cost a decode of every input and heatmap (~0.6 ms a row on the sample job).
        self._thumbnails = Thumbnails()
        self._summary = SummaryBuilder(out_dir) if out_dir is not None else None
        self._parquet = ParquetParts(out_dir / PARQUET_DIR) if out_dir is not None and options.format == "parquet" \
            else None
        # The earlier run's files that no record of this run names yet: removed if this run completes.
        self._unnamed: set[str] = set()
        self._folders_inside: set[PurePosixPath] = set()  # output subfolders found to stay inside out_dir
        if out_dir is not None:
            _check_writable(out_dir)
            self._unnamed = earlier_outputs(out_dir)
            self._open_stream(out_dir / "results.jsonl")
        if jsonl == "-":
            self.streams.append(sys.stdout)
        elif jsonl is not None:
            self._open_stream(Path(jsonl))

    def _open_stream(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stream = path.open("w", encoding="utf-8")
        except OSError as error:
            raise UsageError(f"{path}: cannot open for writing ({error.strerror or error})") from None
        self.streams.append(stream)
        self._owned.append(stream)

    def write_group(self, results: list[Attribution | Failure]) -> list[dict[str, Any]]:
        """Queue one input's files; its record lines follow together, in input order, once the
        files are written. Returns the records (without ``outputs``) for the run's totals; a record
        that fails only as its files are written is told to ``on_failed_late`` (the count) later."""
        results = [self._unless_led_out(result) for result in results]
        if self._pool is not None:
            self._pending.append(self._pool.submit(self._write_files_and_lines, results))
        else:
            self._pending.append(_done(self._write_files_and_lines(results)))
        self._flush(keep=MAX_PENDING)
        records = [result.to_json() for result in results]
        if self._summary is not None:
            for result, record in zip(results, records):
                self._summary.add(record, result.attributions.numpy() if isinstance(result, Attribution) else None)
        return records

    def write_lines(self, lines: list[str]) -> list[dict[str, Any]]:
        """Pass on the record lines of an earlier run (--resume), byte for byte, in their turn."""
        records = [json.loads(line) for line in lines]
        if self._summary is not None:
            for record in records:
                self._summary.add(record)
        self._pending.append(_done((lines, records, 0)))
        self._flush(keep=MAX_PENDING)
        return records

    def _write_files_and_lines(self, results: list[Attribution | Failure]) -> tuple[list[str], list[dict], int]:
        records, failed_late = [], 0
        for result in results:
            if isinstance(result, Attribution) and self.out_dir is not None:
                try:
                    result.outputs = self._write_files(result)
                except OSError as error:
                    if error.errno not in NAME_ERRORS:
                        raise OutputError(f"{self.out_dir}: cannot write outputs for {result.sample.source} "
                                          f"({error.strerror or error}); the records so far are kept") from None
                    # This input's name, not the disk: it fails alone.
                    result = Failure(result.sample.source, result.sample.relpath, "OutputError",
                                     f"{result.sample.source}: cannot write its outputs under this name "
                                     f"({error.strerror or error}); rename the file")
                    failed_late += 1
            records.append(result.to_json())
        return [_dumps(record) for record in records], records, failed_late

    def _unless_led_out(self, result: Attribution | Failure) -> Attribution | Failure:
        """``result``, or its Failure where a folder its files go to is a link out of ``out_dir``."""
        if self.out_dir is None or not isinstance(result, Attribution):
            return result
        folder = PurePosixPath(result.name).parent
        if folder not in self._folders_inside:
            for top in ("heatmaps", "attributions", "records", "html", *REGION_FOLDERS.values()):
                if not inside(self.out_dir / top / folder, self.out_dir):
                    return Failure(result.sample.source, result.sample.relpath, "OutputError",
                                   f"{result.sample.source}: its output folder {top}/{folder} leads out of "
                                   f"{self.out_dir} through a link; remove the link")
            self._folders_inside.add(folder)
        return result

    def end_chunk(self) -> None:
        """The groups written since the last call are a chunk: with output.format parquet, one part."""
        if self._parquet is not None:
            self._pending.append(_done(CHUNK_END))

    def drain(self) -> None:
        """Wait for every queued group and emit its lines; raises the first OutputError."""
        self._flush(keep=0)

    def _flush(self, keep: int) -> None:
        """Emit the finished groups at the head of the queue, waiting while more than ``keep`` are queued."""
        while self._pending and (len(self._pending) > keep or self._pending[0].done()):
            outcome = self._pending.popleft().result()  # a worker's OutputError surfaces here
            if outcome is CHUNK_END:
                self._write_part()
                continue
            lines, records, failed_late = outcome
            if failed_late and self.on_failed_late is not None:
                self.on_failed_late(failed_late)
            self._emit(lines)
            if self._unnamed:
                self._unnamed -= named_outputs(records)
            if self._parquet is not None:
                self._parquet.add(lines)
            for record in records:
                self._show(record)

    def _write_part(self, last: bool = False) -> None:
        if self._parquet is None:  # a part failed: the run stops, and writes no more parts
            return
        try:
            self._parquet.finish() if last else self._parquet.end_chunk()
        except OSError as error:
            self._parquet = None
            raise OutputError(f"{self.out_dir / PARQUET_DIR}: cannot write a part ({error.strerror or error}); "
                              "the records so far are kept in results.jsonl") from None

    def _show(self, record: dict[str, Any]) -> None:
        if self.show is not None and "words" in record:
            color = self.show.isatty() and not os.environ.get("NO_COLOR")
            try:
                self.show.write(render_ansi(record, color) + "\n")
                self.show.flush()
            except BrokenPipeError:
                self._reader_gone(self.show)

    def _write_files(self, attribution: Attribution) -> dict[str, str]:
        written: dict[str, str] = {}
        attributions = attribution.attributions.numpy()
        heatmap = self.options.heatmap
        if isinstance(attribution.sample, TextSample):
            relative = f"html/{attribution.name}.html"
            page = render_html(attribution.to_json())
            write_bytes_atomic(self.out_dir / relative, page.encode("utf-8"))
            written["html"] = relative
        elif heatmap.style != "none":
            shown = attributions if attribution.display is None else attribution.display.numpy()
            values = signed_map(shown, heatmap.sign, heatmap.clip_percentile)
            images = {
                "heatmap": render_overlay(attribution.sample.pixels.numpy(), values, heatmap.opacity)
                if heatmap.style in ("overlay", "both") else render_bare(values),
            }
            if heatmap.style == "both":
                images["heatmap_bare"] = render_bare(values)
            if attribution.region is not None:
                images = {key: outline_region(image, attribution.region.numpy()) for key, image in images.items()}
            for key, image in images.items():
                suffix = ".bare.png" if key == "heatmap_bare" else ".png"
                relative = f"heatmaps/{attribution.name}{suffix}"
                write_bytes_atomic(self.out_dir / relative, png_bytes(np.asarray(image)))
                written[key] = relative
            self._thumbnails.add_heatmap(written["heatmap"], images["heatmap"])
        if attribution.region_ranks is not None:
            pixels = attribution.sample.pixels.numpy()
            for key, image in region_images(pixels, attribution.region_ranks).items():
                relative = f"{REGION_FOLDERS[key]}/{attribution.name}.png"
                write_bytes_atomic(self.out_dir / relative, png_bytes(image))
                written[key] = relative
        sample = attribution.sample
        if getattr(sample, "preview", None) is not None:
            self._thumbnails.add_input(sample.source, sample.preview)
        if self.options.attributions == "npy":
            relative = f"attributions/{attribution.name}.npy"
            buffer = io.BytesIO()
            np.save(buffer, attributions)
            write_bytes_atomic(self.out_dir / relative, buffer.getvalue())
            written["attributions"] = relative
        if self.options.records:
            relative = f"records/{attribution.name}.json"
            written["record"] = relative
            record = attribution.to_json() | {"outputs": dict(written)}
            write_bytes_atomic(self.out_dir / relative, _dumps(record, indent=2).encode())
        return written

    def _emit(self, lines: list[str]) -> None:
        # One write per input: a reader (or --resume after a kill) sees all its records or none.
        text = "".join(line + "\n" for line in lines)
        for stream in list(self.streams):
            try:
                stream.write(text)
                stream.flush()
            except BrokenPipeError:  # `--jsonl - | head`: the reader has all it wants
                self._reader_gone(stream)
            except OSError as error:
                raise OutputError(f"{getattr(stream, 'name', 'output')}: cannot write records "
                                  f"({error.strerror or error})") from None

    def _reader_gone(self, stream: TextIO) -> None:
        """Drop a stream whose reader closed it; the run goes on while another output is left,
        else it stops at once (ReaderGone, exit 141)."""
        if stream is self.show:
            self.show = None
        else:
            self.streams.remove(stream)
            if stream in self._owned:
                self._owned.remove(stream)
        drop_closed_stream(stream)
        if self.out_dir is None and not self.streams and self.show is None:
            raise ReaderGone("every output's reader closed it")

    def start(self, manifest: dict[str, Any]) -> None:
        """Mark the folder as this run's at once: ``manifest.json`` says running (an earlier run's
        says complete until then), and an earlier ``report.html`` is removed (rebuilt at the end)."""
        if self.out_dir is None:
            return
        try:
            (self.out_dir / "report.html").unlink(missing_ok=True)
            remove_parts(self.out_dir)  # results.jsonl is rewritten; the parts follow it
        except OSError as error:
            raise OutputError(f"{self.out_dir / 'report.html'}: cannot remove the earlier report "
                              f"({error.strerror or error})") from None
        self.update_manifest(lambda: manifest, force=True)

    def update_manifest(self, manifest: Callable[[], dict[str, Any]], force: bool = False) -> None:
        """Rewrite ``manifest.json`` with running totals, at most once per ``manifest_every`` seconds."""
        if self.out_dir is None or not force and time.monotonic() - self._manifest_written < self._manifest_every:
            return
        try:
            write_bytes_atomic(self.out_dir / "manifest.json", _dumps(manifest(), indent=2).encode())
        except OSError as error:
            raise OutputError(f"{self.out_dir / 'manifest.json'}: cannot write ({error.strerror or error}); "
                              "the records so far are kept") from None
        self._manifest_written = time.monotonic()

    def finish(self, manifest: dict[str, Any]) -> None:
        """Emit what is still queued, close the streams, write ``manifest.json`` and rebuild
        ``report.html``; never raises over an error already on its way (a full disk is reported
        once, by whoever hit it first)."""
        try:
            self.drain()
        except IgcliError as error:  # already on its way up; files of the rest may be written, unrecorded
            log.debug("%s", error)
            self._pending.clear()
            self._parquet = None  # a full disk is not reported twice
        if self._parquet is not None:
            try:
                self._write_part(last=True)
            except OutputError as error:
                log.error("%s", error)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for stream in self._owned:
            try:
                stream.close()
            except OSError as error:
                log.error("%s: %s", stream.name, error.strerror or error)
        if self.out_dir is None:
            return
        complete = manifest.get("state") == "complete"
        settle_unnamed(self.out_dir, self._unnamed, complete)
        try:
            write_bytes_atomic(self.out_dir / "manifest.json", _dumps(manifest, indent=2).encode())
            self._summary.write(prune=complete)
            write_report(self.out_dir, self._thumbnails)
        except OSError as error:
            log.error("%s: cannot write manifest.json or report.html (%s)", self.out_dir, error.strerror or error)
        finally:
            self._thumbnails.close()


def _done(value: Any) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out_dir / ".igcli-write-check", b"")
        (out_dir / ".igcli-write-check").unlink()
    except OSError as error:
        raise UsageError(f"{out_dir}: output folder is not writable ({error.strerror or error}); "
                         "choose another with -o") from None


# regions: xrai. One folder per image kind, each name the input's own (as heatmaps/): no input's
# region file can take the name of another's, so turning regions on renames no input.
REGION_FOLDERS = {"regions_mask": "regions/ranks", "regions_overlay": "regions/overlays"}


def output_files(name: str, text: bool, options: OutputSection, regions: bool = False) -> list[str]:
    """The files a record named ``name`` writes below the output folder (as ``_write_files`` does);
    ``regions``: the run ranks regions (regions: xrai)."""
    if text:
        files = [f"html/{name}.html"]
    else:
        style = options.heatmap.style
        files = [] if style == "none" else [f"heatmaps/{name}.png"]
        files += [f"heatmaps/{name}.bare.png"] if style == "both" else []
    files += [f"{folder}/{name}.png" for folder in REGION_FOLDERS.values()] if regions and not text else []
    files += [f"attributions/{name}.npy"] if options.attributions == "npy" else []
    files += [f"records/{name}.json"] if options.records else []
    return files


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters that str.splitlines() and JavaScript take for line ends inside a JSON string.
_LINE_BREAKS_IN_STRINGS = re.compile("[\x85\u2028\u2029]")


def _dumps(record: dict[str, Any], indent: int | None = None) -> str:
    text = json.dumps(record, indent=indent, ensure_ascii=False, allow_nan=False, default=str)
    # A file name's undecodable bytes reach here as lone surrogates where a message quotes an OS
    # error; written as \\xNN (names.printable) so that the line is UTF-8 and every record is kept.
    text = _LONE_SURROGATE.sub(lambda match: json.dumps(printable(match.group()))[1:-1], text)
    # Written as \\uNNNN, so that a record is one line for every reader of the JSON lines.
    return _LINE_BREAKS_IN_STRINGS.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
