"""Nothing is written outside -o, even through links planted inside it (docs/hostile-inputs.md):
an output folder or file that is a link out of -o stops the run before any work, and a subfolder
that is one fails its inputs alone. An input whose files cannot be written under its name fails
alone too, and the totals, the exit code and the manifest count it as failed."""
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from igcli.cli.commands import main

from .conftest import DIGITS_CONFIG, SAMPLE_DATA

FAST = ["--device", "cpu", "--steps", "8", "-q"]


def explain(out: Path, *inputs: object):
    return CliRunner().invoke(main, ["explain", "-c", str(DIGITS_CONFIG), *map(str, inputs), "-o", str(out), *FAST])


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(SAMPLE_DATA / "images" / "zero_1437.png", folder / "sub")
    shutil.copy(SAMPLE_DATA / "images" / "one_1449.png", folder)
    return folder


@pytest.mark.parametrize("link", ["heatmaps", "records", "summary", "results.jsonl", "results.parquet"])
def test_a_top_level_output_that_links_out_of_the_folder_stops_the_run_before_any_work(tmp_path, inputs, link):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / link).symlink_to(elsewhere if "." not in link or link.endswith("parquet") else elsewhere / "x.jsonl")
    result = explain(out, inputs)
    assert result.exit_code == 2
    assert result.output.strip() == (f"igcli: error: {out / link}: a link to {os.path.realpath(out / link)}, outside "
                                     "the output folder; igcli writes only inside -o: remove the link, or give "
                                     "another -o")
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == [link]


def test_a_link_inside_the_folder_is_followed_and_a_subfolder_linked_out_fails_its_inputs_alone(tmp_path, inputs):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "records").mkdir(parents=True)
    (out / "kept").mkdir()
    (out / "heatmaps").symlink_to(out / "kept")  # stays inside -o: fine
    elsewhere.mkdir()
    (out / "records" / "sub").symlink_to(elsewhere)
    result = explain(out, inputs)
    assert result.exit_code == 1
    assert list(elsewhere.iterdir()) == []
    records = {r["relpath"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert records["sub/zero_1437.png"]["error"] == {
        "type": "OutputError", "message": f"{inputs / 'sub' / 'zero_1437.png'}: its output folder records/sub leads "
                                          f"out of {out} through a link; remove the link"}
    assert records["one_1449.png"]["outputs"]["heatmap"] == "heatmaps/one_1449.png"
    assert (out / "kept" / "one_1449.png").is_file()
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert (totals["inputs"], totals["failed"], totals["records"]) == (2, 1, 1)


def test_an_input_whose_output_path_is_too_long_fails_alone_and_counts_as_failed(tmp_path, monkeypatch):
    # The input's path fits PATH_MAX relative to the current folder; its outputs' absolute paths do not.
    monkeypatch.chdir(tmp_path)
    deep = Path("in", *["d" * 200] * 19, "e" * (4000 - 19 * 201 - 3))
    os.makedirs(deep)
    shutil.copy(SAMPLE_DATA / "images" / "zero_1437.png", deep / "z.png")
    shutil.copy(SAMPLE_DATA / "images" / "one_1449.png", "in")
    out = tmp_path / ("o" * 120)
    assert len(os.fsencode(out / "heatmaps" / deep.relative_to("in") / "z.png")) > 4096
    result = explain(out, "in")
    assert result.exit_code == 1
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    failed = [r for r in records if r.get("error")]
    assert len(failed) == 1 and failed[0]["error"]["type"] == "OutputError"
    assert "cannot write its outputs under this name" in failed[0]["error"]["message"]
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert (totals["inputs"], totals["failed"], totals["records"]) == (2, 1, 1)
