"""report.html: one offline page over a run's results.jsonl.

A row per record: thumbnails of the input and its heatmap (or the coloured words of a text), the
target and its score, the completeness error, steps, and the error of a failed input. Columns sort
on a click; a filter shows failures, unconverged records or a name. Thumbnails are embedded as
data URIs, so the page is one file that needs no network and no other file. Every value printed
comes from records and paths a user does not control in full, so all of it is escaped.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from PIL import Image

from igcli.data.previews import file_preview, preview
from igcli.results.atomic_files import write_atomic
from igcli.results.jsonl import complete_lines
from igcli.results.summary_view import summary_section
from igcli.results.text_view import word_spans

# Thumbnail threads, up to 8: rows cost ~4 ms each in Pillow, which releases the GIL (with 2 threads a
# 192-image run on the 16-core H100 machine spent 0.8 s here, an eighth of its run).
THREADS = max(2, min(8, os.cpu_count() or 1))
MAX_THUMBNAILS = 2000  # rows with pictures; past that the page would grow by ~5 KB a row
COLUMNS = ("#", "input", "image", "heatmap / words", "target", "F(x)", "F(x')", "completeness error", "steps",
           "status")


def write_report(out_dir: Path, made: Thumbnails | None = None) -> Path:
    """(Re)build ``out_dir/report.html`` from ``out_dir/results.jsonl``; returns its path.

    ``made``: thumbnails a run made while it held the images; the others come from the files (the
    same bytes), which costs a decode per picture.
    """
    made = Thumbnails() if made is None else made
    results = out_dir / "results.jsonl"
    target = out_dir / "report.html"

    def write(stream: BinaryIO) -> None:
        stream.write(_HEAD.encode())
        counts = {"ok": 0, "failed": 0, "unconverged": 0}

        def row(numbered: tuple[int, dict[str, Any]]) -> str:
            number, record = numbered
            return _row(number, record, _status(record), out_dir, made if number <= MAX_THUMBNAILS else None)

        # Thumbnails decode and encode in Pillow, which releases the GIL: rows render in threads,
        # a bounded batch at a time, and are written in order.
        with ThreadPoolExecutor(THREADS, "igcli-report") as pool:
            numbered = enumerate(read_records(results), start=1)
            while batch := list(islice(numbered, 256)):
                for (_, record), text in zip(batch, pool.map(row, batch)):
                    counts[_status(record)] += 1
                    stream.write(text.encode())
        tail = _tail(counts, sum(counts.values()) > MAX_THUMBNAILS)
        # summary.json's section (results/summary_view.py) goes between the table and the script.
        stream.write(tail.replace("\n<script>", "\n" + summary_section(out_dir) + "<script>", 1).encode())

    write_atomic(target, write)
    return target


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a results.jsonl, streamed; a torn last line (a killed run) is skipped."""
    for line in complete_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            yield record


def _status(record: dict[str, Any]) -> str:
    if record.get("error") is not None:
        return "failed"
    return "ok" if _field(record, "completeness", "converged") else "unconverged"


def _field(record: Any, *keys: str) -> Any:
    """``record[k1][k2]...``, or None where a key is missing: records from other versions, or
    edited by hand, still make a page."""
    for key in keys:
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


def _number(value: Any, spec: str) -> tuple[Any, str]:
    """(sort value, shown text) of a number that may be missing."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value, format(value, spec)
    return -1, "n/a"


def _row(number: int, record: dict[str, Any], status: str, out_dir: Path, pictures: Thumbnails | None) -> str:
    """The record's table row; ``pictures`` None: without thumbnails, else those already made."""
    e = html.escape
    source = str(record.get("input", ""))
    if status == "failed":
        error = record["error"]
        kind, message = (_field(error, "type"), _field(error, "message")) if isinstance(error, dict) else (None, error)
        cells = [_cell(number), _cell(source, e(source)), _cell(""), _cell(""), _cell(""), _cell(""), _cell(""),
                 _cell(""), _cell(""), _cell(status, f'<b>{e(str(kind or "error"))}</b>: {e(str(message))}')]
        return f'<tr data-status="failed">{"".join(cells)}</tr>\n'
    label, index, rank = (_field(record, "target", key) for key in ("label", "index", "rank"))
    name = str(label) if label is not None else f"class {index}"
    if rank is not None:
        name += f" (top {rank})"
    outputs = record.get("outputs") if isinstance(record.get("outputs"), dict) else {}
    words = record.get("words") if isinstance(record.get("words"), list) else None
    picture = f'<div class="words">{word_spans(words)}</div>' if words is not None else \
        pictures.heatmap(str(outputs["heatmap"]), out_dir) if "heatmap" in outputs and pictures is not None else ""
    notes = record.get("warnings") if isinstance(record.get("warnings"), list) else []
    warnings = "".join(f'<div class="warn">{e(str(w))}</div>' for w in notes)
    steps = record.get("steps")
    score = record.get("score")
    cells = [
        _cell(number), _cell(source, e(source) + warnings),
        _cell("", pictures.input(source) if pictures is not None and words is None else ""),
        _cell("", picture),
        _cell(name, e(name)), _cell(*_number(record.get("f_input"), ".4g")),
        _cell(*_number(record.get("f_baseline"), ".4g")),
        _cell(*_number(_field(record, "completeness", "rel_error"), ".2e")),
        _cell(steps if isinstance(steps, int) else -1, e(str(steps if steps is not None else "n/a"))),
        _cell(status, e(status) + (f" ({e(str(score))})" if score is not None else "")),
    ]
    return f'<tr data-status="{status}">{"".join(cells)}</tr>\n'


def _cell(sort_value: Any, content: str | None = None) -> str:
    shown = html.escape(str(sort_value)) if content is None else content
    return f'<td data-v="{html.escape(str(sort_value), quote=True)}">{shown}</td>'


class Thumbnails:
    """``thumbnail``s made while a run held the images, by the paths the records give: inputs'
    sources and heatmaps' paths below the output folder; those missing are made from the files.

    Up to MAX_THUMBNAILS of each kind are kept, as JPEG bytes in an anonymous temporary file
    rather than in memory: 2,000 rows of them were ~8 MB of a run's peak memory. Writer threads
    add them and report threads read them at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spool: BinaryIO | None = None
        self._where: dict[tuple[str, str], tuple[int, int]] = {}  # (kind, key) -> (offset, length)
        self._counts = {"input": 0, "heatmap": 0}

    def add_input(self, source: str, image: Image.Image) -> None:
        self._add("input", source, image)

    def add_heatmap(self, relative: str, image: Image.Image) -> None:
        self._add("heatmap", relative, image)

    def input(self, source: str) -> str:
        made = self._made("input", source)
        return _img(made) if made is not None else _file_thumbnail(Path(source))

    def heatmap(self, relative: str, out_dir: Path) -> str:
        made = self._made("heatmap", relative)
        return _img(made) if made is not None else _file_thumbnail(out_dir / relative)

    def close(self) -> None:
        with self._lock:
            if self._spool is not None:
                self._spool.close()
            self._spool, self._where = None, {}

    def _add(self, kind: str, key: str, image: Image.Image) -> None:
        if self._counts[kind] >= MAX_THUMBNAILS or (kind, key) in self._where:
            return
        data = _jpeg(image)
        with self._lock:
            if self._counts[kind] >= MAX_THUMBNAILS or (kind, key) in self._where:
                return
            if self._spool is None:
                self._spool = tempfile.TemporaryFile()
            offset = self._spool.seek(0, os.SEEK_END)
            self._spool.write(data)
            self._where[(kind, key)] = (offset, len(data))
            self._counts[kind] += 1

    def _made(self, kind: str, key: str) -> bytes | None:
        with self._lock:
            where = self._where.get((kind, key))
            if where is None or self._spool is None:
                return None
            self._spool.seek(where[0])
            return self._spool.read(where[1])


def thumbnail(image: Image.Image) -> str:
    """A small JPEG of ``image`` (see previews.preview) as an <img> with a data URI."""
    return _img(_jpeg(image))


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    preview(image).convert("RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _img(jpeg: bytes) -> str:
    return f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}">'


def _file_thumbnail(path: Path) -> str:
    """``thumbnail`` of the image file at ``path`` as its reader saw it, or '' when it cannot be read now."""
    try:
        with Image.open(path) as opened:
            return thumbnail(file_preview(opened))
    except (OSError, ValueError, Image.DecompressionBombError):
        return ""


_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>igcli report</title>
<style>body{font-family:system-ui,sans-serif;margin:1.5rem}table{border-collapse:collapse}
td,th{border-bottom:1px solid #ddd;padding:.3rem .5rem;vertical-align:top;text-align:left}
th{cursor:pointer;background:#f4f4f4;position:sticky;top:0}th:after{content:" \\2195";color:#aaa}
tr[data-status=failed]{background:#fff0f0}tr[data-status=unconverged]{background:#fffbe6}
.words{max-width:40rem;line-height:1.9}.w{padding:0 .15rem;border-radius:.2rem}.warn{color:#a60;font-size:.85em}
img{image-rendering:pixelated;width:64px}</style></head><body>
<h1>igcli report</h1>
<p><label>Show <select id="status"><option value="">all</option><option>ok</option><option>failed</option>
<option>unconverged</option></select></label> <label>input contains <input id="name" size="30"></label>
<span id="shown"></span></p>
<table id="records"><thead><tr>""" + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + """</tr></thead><tbody>
"""


def _tail(counts: dict[str, int], capped: bool) -> str:
    summary = ", ".join(f"{count} {name}" for name, count in counts.items())
    if capped:
        summary += f"; pictures for the first {MAX_THUMBNAILS:,} rows only (the rest are in heatmaps/)"
    return f"""</tbody></table>
<p>{html.escape(summary)}. Completeness error: |sum of attributions - (F(x) - F(x'))| / |F(x) - F(x')|.
Red words raised F for the target, blue lowered it.</p>
<script>
const body = document.querySelector("#records tbody");
const rows = Array.from(body.rows);
function refresh() {{
  const status = document.getElementById("status").value;
  const name = document.getElementById("name").value.toLowerCase();
  let shown = 0;
  for (const row of rows) {{
    const visible = (!status || row.dataset.status === status) &&
      (!name || row.cells[1].dataset.v.toLowerCase().includes(name));
    row.style.display = visible ? "" : "none";
    shown += visible;
  }}
  document.getElementById("shown").textContent = shown + " of " + rows.length + " records";
}}
document.querySelectorAll("#records th").forEach((header, column) => {{
  let ascending = true;
  header.addEventListener("click", () => {{
    const value = row => row.cells[column].dataset.v;
    const numeric = rows.every(row => value(row) === "" || !isNaN(Number(value(row))));
    rows.sort((a, b) => {{
      const x = value(a), y = value(b);
      const order = numeric ? Number(x || -Infinity) - Number(y || -Infinity) : x.localeCompare(y);
      return ascending ? order : -order;
    }});
    ascending = !ascending;
    rows.forEach(row => body.appendChild(row));
  }});
}});
document.getElementById("status").addEventListener("change", refresh);
document.getElementById("name").addEventListener("input", refresh);
refresh();
</script></body></html>
"""
