"""Write each Attribution as it arrives: heatmaps, arrays, JSON records, the JSONL stream.

Output names mirror the inputs' relative paths: ``heatmaps/<relpath>.png`` (``html/<relpath>.html``
for text) and so on, with ``.top<k>`` before the extension for top-k targets.
"""
from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from ..atomic_files import write_atomic, write_bytes_atomic
from ..config import OutputSection
from ..errors import IgcliError, UsageError
from ..records import Attribution, Failure, TextSample
from .heatmap import render_bare, render_overlay, signed_map
from .report import write_report
from .text_view import render_ansi, render_html


log = logging.getLogger("igcli")
MANIFEST_EVERY = 1.0  # seconds between rewrites of the running manifest


class OutputError(IgcliError):
    """An output file could not be written (disk full, permissions); the run stops."""


class RunWriter:
    """All outputs of one run. ``out_dir`` None writes only the JSONL stream."""

    def __init__(self, out_dir: Path | None, options: OutputSection, jsonl: str | None = None,
                 show: TextIO | None = None):
        self.out_dir, self.options, self.show = out_dir, options, show
        self.streams: list[TextIO] = []
        self._owned: list[TextIO] = []
        self._manifest_written = time.monotonic()
        if out_dir is not None:
            _check_writable(out_dir)
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
        """Write one input's files, then its record lines together; returns the records."""
        records = []
        for result in results:
            if isinstance(result, Attribution) and self.out_dir is not None:
                try:
                    result.outputs = self._write_files(result)
                except OSError as error:
                    raise OutputError(f"{self.out_dir}: cannot write outputs for {result.sample.source} "
                                      f"({error.strerror or error}); the records so far are kept") from None
            records.append(result.to_json())
        self._emit([_dumps(record) for record in records])
        for record in records:
            self._show(record)
        return records

    def write_lines(self, lines: list[str]) -> list[dict[str, Any]]:
        """Pass on the record lines of an earlier run (--resume), byte for byte."""
        self._emit(lines)
        records = [json.loads(line) for line in lines]
        for record in records:
            self._show(record)
        return records

    def _show(self, record: dict[str, Any]) -> None:
        if self.show is not None and "words" in record:
            color = self.show.isatty() and not os.environ.get("NO_COLOR")
            self.show.write(render_ansi(record, color) + "\n")
            self.show.flush()

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
            values = signed_map(attributions, heatmap.sign, heatmap.clip_percentile)
            images = {
                "heatmap": render_overlay(attribution.sample.pixels.numpy(), values, heatmap.opacity)
                if heatmap.style in ("overlay", "both") else render_bare(values),
            }
            if heatmap.style == "both":
                images["heatmap_bare"] = render_bare(values)
            for key, image in images.items():
                suffix = ".bare.png" if key == "heatmap_bare" else ".png"
                relative = f"heatmaps/{attribution.name}{suffix}"
                # Level 1: several times faster to encode than the default, for a slightly larger file.
                write_atomic(self.out_dir / relative,
                             lambda stream, img=image: img.save(stream, format="PNG", compress_level=1))
                written[key] = relative
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
        for stream in self.streams:
            try:
                stream.write(text)
                stream.flush()
            except OSError as error:
                raise OutputError(f"{getattr(stream, 'name', 'output')}: cannot write records "
                                  f"({error.strerror or error})") from None

    def update_manifest(self, manifest: Callable[[], dict[str, Any]]) -> None:
        """Rewrite ``manifest.json`` with running totals, at most once per MANIFEST_EVERY seconds."""
        if self.out_dir is None or time.monotonic() - self._manifest_written < MANIFEST_EVERY:
            return
        write_bytes_atomic(self.out_dir / "manifest.json", _dumps(manifest(), indent=2).encode())
        self._manifest_written = time.monotonic()

    def finish(self, manifest: dict[str, Any]) -> None:
        """Close the streams, write ``manifest.json`` and rebuild ``report.html``; never raises
        over an error already on its way (a full disk is reported once, by whoever hit it first)."""
        for stream in self._owned:
            try:
                stream.close()
            except OSError as error:
                log.error("%s: %s", stream.name, error.strerror or error)
        if self.out_dir is None:
            return
        try:
            write_bytes_atomic(self.out_dir / "manifest.json", _dumps(manifest, indent=2).encode())
            write_report(self.out_dir)
        except OSError as error:
            log.error("%s: cannot write manifest.json or report.html (%s)", self.out_dir, error.strerror or error)


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out_dir / ".igcli-write-check", b"")
        (out_dir / ".igcli-write-check").unlink()
    except OSError as error:
        raise UsageError(f"{out_dir}: output folder is not writable ({error.strerror or error}); "
                         "choose another with -o") from None


def _dumps(record: dict[str, Any], indent: int | None = None) -> str:
    return json.dumps(record, indent=indent, ensure_ascii=False, allow_nan=False, default=str)
