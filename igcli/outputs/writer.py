"""Write each Attribution as it arrives: heatmaps, arrays, JSON records, the JSONL stream.

Output names mirror the inputs' relative paths: ``heatmaps/<relpath>.png`` (``html/<relpath>.html``
for text) and so on, with ``.top<k>`` before the extension for top-k targets.
"""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..atomic_files import write_atomic, write_bytes_atomic
from ..config import OutputSection
from ..errors import IgcliError, UsageError
from ..records import Attribution, Failure, TextSample
from .heatmap import render_bare, render_overlay, signed_map
from .text_view import render_ansi, render_html


class OutputError(IgcliError):
    """An output file could not be written (disk full, permissions); the run stops."""


class RunWriter:
    """All outputs of one run. ``out_dir`` None writes only the JSONL stream."""

    def __init__(self, out_dir: Path | None, options: OutputSection, jsonl: str | None = None,
                 show: TextIO | None = None):
        self.out_dir, self.options, self.show = out_dir, options, show
        self.streams: list[TextIO] = []
        self._owned: list[TextIO] = []
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

    def write(self, attribution: Attribution) -> None:
        """Write the files of one attribution, then its record line."""
        if self.out_dir is not None:
            try:
                attribution.outputs = self._write_files(attribution)
            except OSError as error:
                raise OutputError(f"{self.out_dir}: cannot write outputs for {attribution.sample.source} "
                                  f"({error.strerror or error})") from None
        record = attribution.to_json()
        self._emit(record)
        if self.show is not None and "words" in record:
            color = self.show.isatty() and not os.environ.get("NO_COLOR")
            self.show.write(render_ansi(record, color) + "\n")
            self.show.flush()

    def write_failure(self, failure: Failure) -> None:
        self._emit(failure.to_json())

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

    def _emit(self, record: dict[str, Any]) -> None:
        line = _dumps(record) + "\n"
        for stream in self.streams:
            stream.write(line)  # one write per line: a reader never sees half a record
            stream.flush()

    def finish(self, manifest: dict[str, Any]) -> None:
        """Close the streams and write ``manifest.json``."""
        for stream in self._owned:
            stream.close()
        if self.out_dir is not None:
            write_bytes_atomic(self.out_dir / "manifest.json", _dumps(manifest, indent=2).encode())


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
