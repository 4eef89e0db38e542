"""Hostile path lists, URLs, signals and records: one error line and the documented exit code,
never a traceback (docs/hostile-inputs.md)."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from igcli.cli.commands import main

from .conftest import DIGITS_CONFIG, REPO, SAMPLE_DATA

IMAGES = sorted((SAMPLE_DATA / "images").glob("*.png"))
FAST = ["--steps", "8", "--device", "cpu", "-q"]


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("igcli: error: "), result.output
    return lines[0]


# Path lists ---------------------------------------------------------------------------------------

def test_a_files_from_list_with_undecodable_bytes_is_read_as_stdin_is(tmp_path):
    bad = os.fsencode(tmp_path) + b"/bad\xff\xfe.png"
    shutil.copyfile(IMAGES[0], bad)
    shutil.copyfile(IMAGES[1], tmp_path / "good.png")
    listing = bad + b"\n" + os.fsencode(tmp_path / "good.png") + b"\n"
    (tmp_path / "list").write_bytes(listing)
    from_file = run("explain", "-c", DIGITS_CONFIG, "--files-from", tmp_path / "list", "-o", tmp_path / "a", *FAST)
    assert from_file.exit_code == 0, from_file.output
    assert (tmp_path / "a" / "heatmaps" / "bad%FF%FE.png").is_file()
    [first, second] = records(tmp_path / "a")
    assert first["input"].endswith("bad\\xff\\xfe.png") and first["relpath"] == "bad%FF%FE.png"
    from_stdin = run("explain", "-c", DIGITS_CONFIG, "-", "-o", tmp_path / "b", *FAST, input=listing)
    assert from_stdin.exit_code == 0, from_stdin.output
    assert [(r["input"], r["relpath"], r["f_input"]) for r in records(tmp_path / "b")] == \
        [(r["input"], r["relpath"], r["f_input"]) for r in (first, second)]


@pytest.mark.parametrize("content,line", [(b"a" * 10_000, 1), (b"x.png\n\n" + b"b" * 4097 + b"\n", 3)])
def test_a_path_list_line_over_path_max_is_one_usage_error(tmp_path, content, line):
    (tmp_path / "list").write_bytes(content)
    result = run("explain", "-c", DIGITS_CONFIG, "--files-from", tmp_path / "list", "-o", tmp_path / "o", *FAST)
    assert result.exit_code == 2
    assert re.search(rf"--files-from \S*list: line {line} is over 4096 bytes", one_error_line(result))
    on_stdin = run("explain", "-c", DIGITS_CONFIG, "-", "-o", tmp_path / "o", *FAST, input=content)
    assert on_stdin.exit_code == 2 and f"stdin: line {line} is over 4096 bytes" in one_error_line(on_stdin)
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_a_path_list_line_of_path_max_bytes_is_a_path_and_a_nul_is_refused(tmp_path):
    long_name = str(tmp_path / ("d" * 200) / ("e" * 200) / "x.png")
    long_name += "/" * (4096 - len(os.fsencode(long_name)))  # exactly PATH_MAX bytes: read as a path
    (tmp_path / "list").write_bytes(os.fsencode(long_name) + b"\r\n")
    result = run("explain", "-c", DIGITS_CONFIG, "--files-from", tmp_path / "list", "-o", tmp_path / "o", *FAST)
    assert result.exit_code == 1 and "file not found" in records(tmp_path / "o")[0]["error"]["message"]
    (tmp_path / "nul").write_bytes(os.fsencode(IMAGES[0]) + b"\0" + os.fsencode(IMAGES[1]) + b"\0")
    result = run("explain", "-c", DIGITS_CONFIG, "--files-from", tmp_path / "nul", "-o", tmp_path / "n", *FAST)
    assert result.exit_code == 2 and "line 1 holds a NUL byte" in one_error_line(result)


def test_files_from_reads_a_pipe(tmp_path):
    fifo = tmp_path / "paths"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "wb") as stream:
            stream.write(b"".join(os.fsencode(p) + b"\n" for p in IMAGES[:2]))

    writer = threading.Thread(target=feed)
    writer.start()
    result = run("explain", "-c", DIGITS_CONFIG, "--files-from", fifo, "-o", tmp_path / "o", *FAST)
    writer.join()
    assert result.exit_code == 0, result.output
    assert [r["relpath"] for r in records(tmp_path / "o")] == [p.name for p in IMAGES[:2]]


# URLs ---------------------------------------------------------------------------------------------

def test_zip_urls_open_their_archive_or_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # zip:// with no archive would open the current folder
    archive = tmp_path / "digits.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(IMAGES[2], f"set/{IMAGES[2].name}")
    for args in (["-o", "zip://x"], ["zip://a", "-o", tmp_path / "o"]):
        result = run("explain", "-c", DIGITS_CONFIG, IMAGES[0], *args, *FAST)
        assert result.exit_code == 2 and "no archive named; a zip:// URL names the archive after '::'" \
            in one_error_line(result)
    result = run("report", "zip://x")
    assert result.exit_code == 2 and one_error_line(result) == ("igcli: error: zip://x: no archive named; a zip:// "
                                                                "URL names the archive after '::' "
                                                                "(zip://path::archive.zip)")
    for command in (["explain", "-c", DIGITS_CONFIG, IMAGES[0], *FAST, "-o"], ["report"]):
        result = run(*command, f"zip://out::{archive}")
        assert result.exit_code == 2 and "filesystem here is read-only" in one_error_line(result)
    result = run("explain", "-c", DIGITS_CONFIG, f"zip://set/{IMAGES[2].name}::{archive}", "-o", tmp_path / "z", *FAST)
    assert result.exit_code == 0, result.output
    local = run("explain", "-c", DIGITS_CONFIG, IMAGES[2], "-o", tmp_path / "l", *FAST)
    assert local.exit_code == 0
    [zipped_record], [local_record] = records(tmp_path / "z"), records(tmp_path / "l")
    assert zipped_record["input"] == f"zip://set/{IMAGES[2].name}::{archive}"
    assert zipped_record["f_input"] == local_record["f_input"]
    assert zipped_record["attribution_sum"] == local_record["attribution_sum"]


def test_an_http_input_with_nothing_listening_fails_alone(tmp_path):
    pytest.importorskip("aiohttp")
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.png"
    result = run("explain", "-c", DIGITS_CONFIG, url, IMAGES[0], "-o", tmp_path / "o", *FAST)
    assert result.exit_code == 1, result.output
    failed, explained = records(tmp_path / "o")
    assert failed["input"] == url and failed["error"]["message"].startswith(f"{url}: cannot ")
    assert explained["relpath"] == IMAGES[0].name and explained.get("error") is None


# Signals ------------------------------------------------------------------------------------------

def test_sigint_during_start_up_exits_130_in_one_line(tmp_path):
    images = tmp_path / "images"
    shutil.copytree(SAMPLE_DATA / "images", images)
    # -X importtime reports each import as it ends: the signal lands while torch is being imported,
    # in the process that runs (after igcli's malloc restart), before the run's own handler.
    process = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "igcli", "explain", "-c", str(DIGITS_CONFIG),
                                str(images), "-o", str(tmp_path / "o"), *FAST],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in process.stderr:
        if re.search(rb"\|\s+torch\.", line):
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    messages = [line for line in stderr.decode().splitlines() if not line.startswith("import time:")]
    assert process.returncode == 130, messages
    assert not any("Aborted" in line or "Traceback" in line for line in messages), messages


# Records ------------------------------------------------------------------------------------------

def test_summary_skips_records_it_cannot_use_with_one_warning(tmp_path):
    out = tmp_path / "o"
    assert run("explain", "-c", DIGITS_CONFIG, *IMAGES[:3], "-o", out, *FAST).exit_code == 0
    written = json.loads((out / "summary.json").read_text())
    lines = (out / "results.jsonl").read_text().splitlines()
    no_target = json.loads(lines[0])
    del no_target["target"]
    wrong_type = json.loads(lines[1]) | {"completeness": "ok"}
    edited = lines + [json.dumps(no_target), json.dumps(wrong_type), '{"foreign": true}', "[1, 2]"]
    (out / "results.jsonl").write_text("\n".join(edited) + "\n")
    result = run("summary", out)
    assert result.exit_code == 0, result.output
    assert "igcli: WARNING: 3 records in results.jsonl lack fields summary needs; skipped" in result.output
    rebuilt = json.loads((out / "summary.json").read_text())
    assert rebuilt["records"] == 3 and rebuilt["classes"] == written["classes"]
    assert run("report", out).exit_code == 0
