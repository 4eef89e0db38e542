"""A folder named as inputs that is itself an igcli run's output (docs/hostile-inputs.md): refused
in one line with exit 2, locally, by glob and by memory:// URL; a dataset's own manifest.json (not
igcli's) marks nothing, at the root or in a subfolder."""
import json
import shutil
import uuid
from pathlib import Path

import fsspec
import pytest
from click.testing import CliRunner

from igcli.cli.commands import main

from .conftest import DIGITS_CONFIG, SAMPLE_DATA

FAST = ["--device", "cpu", "--steps", "8", "-q"]
IMAGES = sorted((SAMPLE_DATA / "images").glob("*.png"))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


@pytest.fixture
def earlier_output(tmp_path) -> Path:
    """``loc/``: the -o of a run over ``loc/images``, so it holds the inputs and their heatmaps."""
    loc = tmp_path / "loc"
    shutil.copytree(SAMPLE_DATA / "images", loc / "images")
    assert run("explain", "-c", DIGITS_CONFIG, loc / "images", "-o", loc, *FAST).exit_code == 0
    assert (loc / "heatmaps").is_dir() and (loc / "manifest.json").is_file()
    return loc


@pytest.mark.parametrize("spec", ["{loc}", "{loc}/**/*.png"])
def test_an_earlier_runs_output_folder_as_inputs_is_one_line_and_exit_2(earlier_output, tmp_path, spec):
    result = run("explain", "-c", DIGITS_CONFIG, spec.format(loc=earlier_output), "-o", tmp_path / "loc2", *FAST)
    assert result.exit_code == 2, result.output
    [line] = error_lines(result)
    assert "an igcli run's output folder (manifest.json there)" in line
    assert line.count(str(earlier_output)) == (1 if spec == "{loc}" else 2)  # a folder is named once
    assert "name the inputs' own folder" in line
    assert not (tmp_path / "loc2" / "results.jsonl").exists()
    # The inputs beside the output are still explained when named; a rerun into loc/ is unchanged.
    assert run("explain", "-c", DIGITS_CONFIG, earlier_output / "images", "-o", tmp_path / "loc2", *FAST).exit_code == 0
    assert len(records(tmp_path / "loc2")) == len(IMAGES)
    assert run("explain", "-c", DIGITS_CONFIG, earlier_output / "images", "-o", earlier_output, *FAST).exit_code == 0


def test_a_lock_alone_marks_an_output_folder(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SAMPLE_DATA / "images", data)
    (data / ".igcli.lock").write_text("12345\n")
    result = run("explain", "-c", DIGITS_CONFIG, data, "-o", tmp_path / "out", *FAST)
    assert result.exit_code == 2 and ".igcli.lock there" in result.output


def test_a_datasets_own_manifest_json_marks_nothing(tmp_path):
    data = tmp_path / "data"
    for index, image in enumerate(IMAGES):
        folder = data / "sub" if index % 2 else data
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, folder / image.name)
    (data / "manifest.json").write_text(json.dumps({"images": [image.name for image in IMAGES]}))
    (data / "sub" / "manifest.json").write_text('{"igcli": "not a run: no state", "split": "train"}')
    result = run("explain", "-c", DIGITS_CONFIG, data, "-o", tmp_path / "out", *FAST)
    assert result.exit_code == 0, result.output
    assert len(records(tmp_path / "out")) == len(IMAGES)


def test_a_memory_url_output_folder_as_inputs_is_one_line_and_exit_2(tmp_path):
    fs = fsspec.filesystem("memory")
    root = f"/igcli-roots-{uuid.uuid4().hex}"
    for image in IMAGES:
        fs.pipe(f"{root}/data/images/{image.name}", image.read_bytes())
    data, data2 = f"memory://{root}/data", f"memory://{root}/data2"
    try:
        assert run("explain", "-c", DIGITS_CONFIG, f"{data}/images", "-o", data, *FAST).exit_code == 0
        assert fs.isfile(f"{root}/data/manifest.json") and fs.isdir(f"{root}/data/heatmaps")
        for spec in (data, f"{data}/**.png"):
            result = run("explain", "-c", DIGITS_CONFIG, spec, "-o", data2, *FAST)
            assert result.exit_code == 2, result.output
            [line] = error_lines(result)
            assert line.endswith("name the inputs' own folder or files inside it instead, or move them out of it")
            assert f"{spec}: {root}/data is an igcli run's output folder (manifest.json there)" in line
            assert not fs.exists(f"{root}/data2/results.jsonl")
        fs.pipe(f"{root}/plain/manifest.json", b'{"files": 12}')  # a dataset's own manifest
        for image in IMAGES:
            fs.pipe(f"{root}/plain/{image.name}", image.read_bytes())
        assert run("explain", "-c", DIGITS_CONFIG, f"memory://{root}/plain", "-o", tmp_path / "p", *FAST).exit_code == 0
        assert len(records(tmp_path / "p")) == len(IMAGES)
    finally:
        fs.rm(root, recursive=True)


def test_an_earlier_runs_output_below_an_input_folder_is_skipped_with_a_warning_naming_it(earlier_output, tmp_path):
    parent = earlier_output.parent
    shutil.copy(IMAGES[0], parent / IMAGES[0].name)
    result = run("explain", "-c", DIGITS_CONFIG, parent, "-o", tmp_path / "out2", "--device", "cpu", "--steps", "8")
    assert result.exit_code == 0, result.output
    assert f"{earlier_output}: skipped, an igcli run's output folder (manifest.json there)" in result.output
    records = [json.loads(line) for line in (tmp_path / "out2" / "results.jsonl").read_text().splitlines()]
    assert [record["relpath"] for record in records] == [IMAGES[0].name]
