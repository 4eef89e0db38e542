"""output.format parquet: results.parquet/ holds results.jsonl's rows, one whole part per chunk, one
schema for every part; resumed and --workers runs hold the rows of one process."""
import errno
import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from igcli.cli.commands import main
from igcli.config import load_config
from igcli.errors import ConfigError

from .conftest import DIGITS_CONFIG, SAMPLE_DATA

try:
    import pyarrow.parquet as pq
except ImportError:  # the tests of the error without it still run
    pq = None
needs_pyarrow = pytest.mark.skipif(pq is None, reason="pyarrow is not installed: pip install 'igcli[parquet]'")

SMALL_CHUNKS = ["--device", "cpu", "--set", "chunk_inputs=3", "--steps", "8", "-q"]  # several chunks, a dozen inputs
PARQUET = SMALL_CHUNKS + ["--set", "output.format=parquet", "--set", "metrics=[deletion]"]  # metrics: the map column
METRICS = ["deletion", "insertion", "infidelity", "sensitivity"]  # the metrics column's fields
# Each flat column, as the path to its value in a results.jsonl record (null where the path is absent).
FLAT = {
    "input": ("input",), "relpath": ("relpath",), "error_type": ("error", "type"), "error": ("error", "message"),
    "target": ("target", "index"), "label": ("target", "label"), "rank": ("target", "rank"), "score": ("score",),
    "f_input": ("f_input",), "f_baseline": ("f_baseline",), "attribution_sum": ("attribution_sum",),
    "abs_error": ("completeness", "abs_error"), "rel_error": ("completeness", "rel_error"),
    "tolerance": ("completeness", "tolerance"), "within_float_noise": ("completeness", "within_float_noise"),
    "map_error": ("completeness", "map_error"), "map_tolerance": ("completeness", "map_tolerance"),
    "converged": ("completeness", "converged"), "stopped_by": ("stopped_by",), "steps": ("steps",),
    "gradient_evals": ("gradient_evals",), "rule": ("rule",), "baseline": ("baseline", "kind"),
    "seconds": ("seconds",), "heatmap": ("outputs", "heatmap"), "attributions": ("outputs", "attributions"),
    "warnings": ("warnings",), "key": ("key",),
}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def dig(record, path):
    for part in path:
        record = record.get(part) if isinstance(record, dict) else None
    return record


def parts(out: Path) -> list[Path]:
    return sorted((out / "results.parquet").iterdir())


def untimed_rows(out: Path) -> list[dict]:
    """The folder's rows, read as one table, with the timing in them blanked."""
    rows = pq.read_table(out / "results.parquet").to_pylist()
    for row in rows:
        record = json.loads(row["record"])
        row["seconds"], row["record"] = None, json.dumps(record | {"seconds": None})
    return rows


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """A one-process parquet run on the sample images and a corrupt one (a failure record)."""
    root = tmp_path_factory.mktemp("parquet")
    images = root / "images"
    shutil.copytree(SAMPLE_DATA / "images", images)
    png = (images / "five_1444.png").read_bytes()
    (images / "five_broken.png").write_bytes(png[: len(png) // 2])  # a PNG cut in half
    (images / "nine\u2028 ü \"q\".png").write_bytes(png)  # a line separator and a quote in a name
    result = run("explain", "-c", DIGITS_CONFIG, images, "-o", root / "one", *PARQUET)
    assert result.exit_code == 1, result.output  # the corrupt image failed, the rest did not
    return images, root / "one"


@needs_pyarrow
def test_the_table_is_results_jsonl_row_for_row_with_one_schema_in_every_part(one_process):
    _, out = one_process
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    files = parts(out)
    assert len(files) >= 3 and all(f.name.startswith("part-") and f.suffix == ".parquet" for f in files)
    schemas = [pq.read_schema(f) for f in files]
    assert all(s.equals(schemas[0]) for s in schemas)  # the failure's part included
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    assert [row["record"] for row in rows] == lines
    records = [json.loads(line) for line in lines]
    assert set(rows[0]) == set(FLAT) | {"ok", "metrics", "record"}
    for row, record in zip(rows, records):
        assert {name: row[name] for name in FLAT} == {name: dig(record, path) for name, path in FLAT.items()}
        assert row["ok"] == (record["error"] is None)
        metrics = record.get("metrics")
        assert row["metrics"] == ({name: metrics.get(name) for name in METRICS} if metrics else None)
    failed = [row for row in rows if not row["ok"]]
    assert [row["relpath"] for row in failed] == ["five_broken.png"]
    assert failed[0]["error_type"] and failed[0]["f_input"] is None and failed[0]["steps"] is None
    assert sum(row["converged"] is not None for row in rows) == 13
    # One table for any Arrow reader: the folder read whole has the parts' rows and schema.
    table = pq.read_table(out / "results.parquet")
    assert table.num_rows == len(lines) and table.schema.equals(schemas[0])


@needs_pyarrow
def test_a_resumed_run_and_two_workers_hold_the_rows_of_one_process(one_process, tmp_path):
    images, one = one_process
    expected = untimed_rows(one)
    two = tmp_path / "two"
    result = run("explain", "-c", DIGITS_CONFIG, images, "-o", two, *PARQUET, "--workers", 2)
    assert result.exit_code == 1, result.output
    assert untimed_rows(two) == expected
    # As a run killed mid-way leaves it: its first records and part, and a part's temporary file.
    cut = tmp_path / "cut"
    shutil.copytree(one, cut)
    lines = (cut / "results.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (cut / "results.jsonl").write_text("".join(lines[:4]), encoding="utf-8")
    for part in parts(cut)[1:]:
        part.unlink()
    (cut / "results.parquet" / ".part-000001.parquet.99-0.tmp").write_bytes(b"PAR1 torn")
    result = run("explain", "-c", DIGITS_CONFIG, images, "-o", cut, *PARQUET, "--resume")
    assert result.exit_code == 1, result.output
    assert json.loads((cut / "manifest.json").read_text())["totals"]["reused"] >= 3
    assert untimed_rows(cut) == expected
    assert [p.name for p in parts(cut)] == [p.name for p in parts(one)]
    # A jsonl run into the folder removes the parts that no longer match its results.jsonl.
    assert run("explain", "-c", DIGITS_CONFIG, images, "-o", cut, *SMALL_CHUNKS, "--resume").exit_code == 1
    assert parts(cut) == []


@needs_pyarrow
def test_a_part_that_cannot_be_written_leaves_the_whole_parts_before_it(one_process, tmp_path, monkeypatch):
    images, _ = one_process
    written = []

    def full_disk(table, where, **options):
        if written:
            where.write(b"PAR1 half a part")
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(table.num_rows)
        real_write(table, where, **options)

    real_write = pq.write_table
    monkeypatch.setattr(pq, "write_table", full_disk)
    out = tmp_path / "out"
    result = run("explain", "-c", DIGITS_CONFIG, images, "-o", out, *PARQUET)
    assert result.exit_code == 1 and result.output.count("cannot write a part") == 1, result.output
    assert [p.name for p in (out / "results.parquet").iterdir()] == ["part-000000.parquet"]
    assert pq.read_table(out / "results.parquet").num_rows == written[0]


@needs_pyarrow
def test_an_empty_shard_writes_an_empty_part_with_the_columns(sample_tree, tmp_path):
    import zlib

    names = [path.name.encode() for path in sample_tree.iterdir()]
    empty = next(i for i in range(64) if all(zlib.crc32(name) % 64 != i for name in names))
    out = tmp_path / "out"
    result = run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", out, *PARQUET, "--shard", f"{empty}/64")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "results.parquet")
    assert table.num_rows == 0 and "f_input" in table.column_names and "record" in table.column_names


@needs_pyarrow
def test_a_hand_edited_line_gives_nulls_not_a_failed_part(tmp_path):
    """--resume passes on lines of an earlier results.jsonl byte for byte: values of the wrong type
    become nulls in the columns, and the line itself is kept in ``record``."""
    from igcli.results.parquet import ParquetParts

    line = ('{"input": "a.png", "relpath": "a.png", "target": {"index": 99999999999999999999, "label": "\\ud800x"}, '
            '"f_input": NaN, "f_baseline": "0.5", "steps": 2.0, "completeness": {"converged": 1}, '
            '"metrics": {"deletion": 0.25, "bogus": 1}, "warnings": "none", "error": null}')
    parts = ParquetParts(tmp_path / "results.parquet")
    parts.add([line])
    parts.end_chunk()
    (row,) = pq.read_table(tmp_path / "results.parquet").to_pylist()
    assert row["record"] == line and row["ok"] is True and row["label"] == "?x"
    assert [row[name] for name in ("target", "f_input", "f_baseline", "steps", "converged", "warnings")] == [None] * 6
    assert row["metrics"] == {"deletion": 0.25, "insertion": None, "infidelity": None, "sensitivity": None}


@needs_pyarrow
def test_ray_data_reads_the_folder_as_one_table(one_process):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    _, out = one_process
    ray.init(num_cpus=1, include_dashboard=False)
    try:
        dataset = ray.data.read_parquet(str(out / "results.parquet"))
        rows = sorted(dataset.select_columns(["relpath", "ok", "f_input"]).take_all(), key=lambda r: r["relpath"])
    finally:
        ray.shutdown()
    expected = sorted(pq.read_table(out / "results.parquet", columns=["relpath", "ok", "f_input"]).to_pylist(),
                      key=lambda r: r["relpath"])
    assert [dict(row) for row in rows] == expected


def test_without_pyarrow_the_run_stops_before_any_work_with_the_pip_line(tmp_path, monkeypatch, sample_tree):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as where the extra is not installed
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", "-c", str(DIGITS_CONFIG), str(sample_tree), "-o", str(out),
                                       *PARQUET])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "igcli: error: output.format parquet needs pyarrow: pip install 'igcli[parquet]' (or set output.format: jsonl)"]
    assert not out.exists()


def test_format_is_checked_like_every_key(tmp_path, sample_tree):
    with pytest.raises(ConfigError, match=r"did you mean 'output.format'"):
        load_config(DIGITS_CONFIG, [("output.fromat=parquet", "--set")])
    with pytest.raises(ConfigError, match=r"'output.format'.*'jsonl' or 'parquet'"):
        load_config(DIGITS_CONFIG, [("output.format=parket", "--set")])
    result = run("explain", "-c", DIGITS_CONFIG, sample_tree, "--jsonl", tmp_path / "r.jsonl", *PARQUET)
    assert result.exit_code == 2 and "give -o OUT_DIR" in result.output
