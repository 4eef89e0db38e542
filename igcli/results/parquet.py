"""``output.format: parquet``: results.jsonl's records again as a Parquet dataset, one part per chunk.

``results.parquet/part-NNNNNN.parquet`` holds chunk N's records once they are in results.jsonl,
each part written whole (temporary name, then rename), so the folder is always whole parts and
the same rows as results.jsonl. Every part has one schema (``schema()``): flat, typed columns for
what users filter on, and the record's results.jsonl line in ``record``. results.jsonl stays the
source of truth (--resume, summary and diff read it). docs/runs.md, docs/scaling.md.
"""
from __future__ import annotations

import io
import json
import math
import re
import typing
from pathlib import Path
from typing import Any

from igcli.config import MetricName
from igcli.errors import UsageError
from igcli.results.atomic_files import write_atomic

PARQUET_DIR = "results.parquet"
PART = re.compile(r"part-\d+\.parquet")  # the parts this module writes; nothing else there is touched
INSTALL = "pip install 'igcli[parquet]'"
METRICS = typing.get_args(MetricName)  # the fields of the ``metrics`` column


def require_parquet(out_dir: Path | None) -> None:
    """UsageError (exit 2) where parquet cannot be written: no output folder, or no pyarrow.
    Checked before the run does any work."""
    if out_dir is None:
        raise UsageError(f"output.format parquet writes {PARQUET_DIR}/ in the output folder: give -o OUT_DIR")
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UsageError(f"output.format parquet needs pyarrow: {INSTALL} (or set output.format: jsonl)") from None


def schema() -> Any:
    """The columns of every part, success and failure records alike (absent values are null)."""
    import pyarrow as pa

    text, number, count = pa.string(), pa.float64(), pa.int64()
    return pa.schema([
        ("input", text), ("relpath", text),
        ("ok", pa.bool_()), ("error_type", text), ("error", text),
        ("target", count), ("label", text), ("rank", count), ("score", text),
        ("f_input", number), ("f_baseline", number), ("attribution_sum", number),
        ("abs_error", number), ("rel_error", number), ("tolerance", number), ("within_float_noise", pa.bool_()),
        ("map_error", number), ("map_tolerance", number), ("converged", pa.bool_()),
        ("stopped_by", text), ("steps", count), ("gradient_evals", count), ("rule", text), ("baseline", text),
        ("seconds", number), ("heatmap", text), ("attributions", text),
        ("metrics", pa.struct([(name, number) for name in METRICS])), ("warnings", pa.list_(text)), ("key", text),
        ("record", text),
    ])


def row(line: str) -> dict[str, Any]:
    """The columns of the record on one results.jsonl line. A value of the wrong type (an edited
    line that --resume passed on) becomes null, not an error."""
    record = _mapping(json.loads(line))
    error = _mapping(record.get("error"))
    target, completeness = _mapping(record.get("target")), _mapping(record.get("completeness"))
    outputs, metrics = _mapping(record.get("outputs")), _mapping(record.get("metrics"))
    warnings = record.get("warnings")
    return {
        "input": _text(record.get("input")), "relpath": _text(record.get("relpath")),
        "ok": record.get("error") is None,
        "error_type": _text(error.get("type")), "error": _text(error.get("message")),
        "target": _integer(target.get("index")), "label": _text(target.get("label")),
        "rank": _integer(target.get("rank")), "score": _text(record.get("score")),
        "f_input": _number(record.get("f_input")), "f_baseline": _number(record.get("f_baseline")),
        "attribution_sum": _number(record.get("attribution_sum")),
        "abs_error": _number(completeness.get("abs_error")), "rel_error": _number(completeness.get("rel_error")),
        "tolerance": _number(completeness.get("tolerance")),
        "within_float_noise": _flag(completeness.get("within_float_noise")),
        "map_error": _number(completeness.get("map_error")),
        "map_tolerance": _number(completeness.get("map_tolerance")),
        "converged": _flag(completeness.get("converged")),
        "stopped_by": _text(record.get("stopped_by")), "steps": _integer(record.get("steps")),
        "gradient_evals": _integer(record.get("gradient_evals")), "rule": _text(record.get("rule")),
        "baseline": _text(_mapping(record.get("baseline")).get("kind")), "seconds": _number(record.get("seconds")),
        "heatmap": _text(outputs.get("heatmap", outputs.get("html"))), "attributions": _text(outputs.get("attributions")),
        "metrics": {name: _number(metrics.get(name)) for name in METRICS} if metrics else None,
        "warnings": [str(w) for w in warnings] if isinstance(warnings, list) else None,
        "key": _text(record.get("key")),
        "record": line,
    }


class ParquetParts:
    """The parts of one run's ``results.parquet/``: rows gathered as records are written, one part per chunk."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.rows: list[dict[str, Any]] = []
        self.chunk = 0  # parts are named by chunk: a resumed run writes the same names
        self.written = 0

    def add(self, lines: list[str]) -> None:
        self.rows.extend(row(line) for line in lines)

    def end_chunk(self, empty_too: bool = False) -> None:
        """Write the rows gathered since the last chunk as this chunk's part (none if there are
        none, unless ``empty_too``)."""
        import pyarrow.parquet as pq

        if self.rows or empty_too:
            table = _table(self.rows)
            # zstd: ~1.7x smaller than snappy on varied records; pyarrow, DuckDB, Spark and Polars read it.
            write_atomic(self.folder / f"part-{self.chunk:06d}.parquet",
                         lambda stream: pq.write_table(table, stream, compression="zstd"))
            self.rows = []
            self.written += 1
        self.chunk += 1

    def finish(self) -> None:
        """The rows of a chunk cut short (they are in results.jsonl too); an empty part where the
        run wrote none (an empty shard), so that the folder reads as a table with its columns."""
        if self.rows or not self.written:
            self.end_chunk(empty_too=True)


def _table(rows: list[dict[str, Any]]) -> Any:
    """The rows as an Arrow table of ``schema()``, through Arrow's JSON reader: building it from
    Python objects (Table.from_pylist) imports pandas where it is installed, ~0.3 s a run."""
    import pyarrow.json as pj

    if not rows:
        return schema().empty_table()
    # A lone surrogate (an edited line's "\\ud800") is not UTF-8: replaced, as the reader needs UTF-8.
    data = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode("utf-8", "replace")
    return pj.read_json(io.BytesIO(data),
                        read_options=pj.ReadOptions(use_threads=False, block_size=min(len(data) + 1, 2**31 - 1)),
                        parse_options=pj.ParseOptions(explicit_schema=schema(), unexpected_field_behavior="error"))


def remove_parts(out_dir: Path) -> None:
    """Delete the parts an earlier run left in ``out_dir``: its results.jsonl is being rewritten."""
    folder = out_dir / PARQUET_DIR
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if PART.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _integer(value: Any) -> int | None:
    fits = isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63
    return value if fits else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int past float's range
        return None
    return number if math.isfinite(number) else None
