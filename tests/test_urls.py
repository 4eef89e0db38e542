"""Inputs by fsspec URL (file://, memory://): the same records and files as the local paths give,
the URL kept as each record's input; -o file://; unknown or uninstalled filesystems in one line."""
import importlib.util
import json
from pathlib import Path

import fsspec
import pytest
from click.testing import CliRunner

from igcli.cli.commands import main

from .conftest import DIGITS_CONFIG, SAMPLE_DATA

FAST = ["--device", "cpu", "--steps", "8", "-q"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def without_inputs_and_timings(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("input", "seconds")} for r in records(out)]


def files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.parent != out and not p.name.endswith(".json")}


@pytest.fixture
def memory_images():
    fs = fsspec.filesystem("memory")
    root = "/igcli-test/scans"
    for image in sorted((SAMPLE_DATA / "images").glob("*.png")):
        folder = "odd" if image.name < "o" else "even"  # a tree two deep, mirrored by the outputs
        fs.pipe(f"{root}/{folder}/{image.name}", image.read_bytes())
    fs.pipe(f"{root}/notes.txt", b"not an image: skipped in a folder")
    yield f"memory://{root}"
    fs.rm("/igcli-test", recursive=True)


def test_a_memory_url_folder_gives_the_records_of_the_same_local_tree(memory_images, tmp_path):
    local = tmp_path / "local"
    for image in sorted((SAMPLE_DATA / "images").glob("*.png")):
        (local / ("odd" if image.name < "o" else "even")).mkdir(parents=True, exist_ok=True)
        (local / ("odd" if image.name < "o" else "even") / image.name).write_bytes(image.read_bytes())
    from_url, from_path = tmp_path / "url", tmp_path / "path"
    assert run("explain", "-c", DIGITS_CONFIG, memory_images, "-o", from_url, *FAST).exit_code == 0
    assert run("explain", "-c", DIGITS_CONFIG, local, "-o", from_path, *FAST).exit_code == 0
    assert len(records(from_url)) == 12
    assert without_inputs_and_timings(from_url) == without_inputs_and_timings(from_path)
    assert [r["input"] for r in records(from_url)] == \
        [f"{memory_images}/{r['relpath']}" for r in records(from_path)]
    assert files(from_url) == files(from_path)  # heatmaps, arrays, record files, byte for byte


def test_a_glob_url_a_file_url_and_a_file_output_url(memory_images, tmp_path):
    out = tmp_path / "out"
    image = sorted((SAMPLE_DATA / "images").glob("*.png"))[0]
    result = run("explain", "-c", DIGITS_CONFIG, f"{memory_images}/even/s*.png", image.as_uri(),
                 "-o", out.as_uri(), *FAST)
    assert result.exit_code == 0, result.output
    found = records(out)
    assert [r["relpath"] for r in found] == ["seven_1443.png", "six_1446.png", image.name]
    assert found[-1]["input"] == image.as_uri()
    assert (out / "heatmaps" / "six_1446.png").is_file()


def test_a_missing_url_input_is_a_failure_record_not_a_stop(memory_images, tmp_path):
    out = tmp_path / "out"
    result = run("explain", "-c", DIGITS_CONFIG, f"{memory_images}/even/six_1446.png",
                 f"{memory_images}/even/gone.png", "-o", out, *FAST)
    assert result.exit_code == 1
    failed = [r for r in records(out) if r["error"] is not None]
    assert [r["error"]["message"] for r in failed] == [f"{memory_images}/even/gone.png: file not found"]


@pytest.mark.parametrize("url,message", [
    ("nosuchfs://bucket/x", "fsspec knows no 'nosuchfs' filesystem"),
    pytest.param("s3://bucket/images/", "needs a package that is not installed",
                 marks=pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")),
])
def test_an_unknown_or_uninstalled_filesystem_is_one_line_and_exit_2(url, message, tmp_path):
    result = run("explain", "-c", DIGITS_CONFIG, url, "-o", tmp_path / "out", *FAST)
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1
