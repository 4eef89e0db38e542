"""`igcli explain ... --jsonl - | head -n 1` through a real pipe (docs/runs.md): the reader closing
it ends the run quietly, exit 141, where stdout was the only output; with -o the run goes on and
its outputs are whole, exit 0. No error line either way."""
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import DIGITS_CONFIG, REPO, SAMPLE_DATA

IMAGES = sorted((SAMPLE_DATA / "images").glob("*.png"))
COPIES = 8  # 96 records of ~0.8 KB: more than a pipe holds, so writes go on after the reader is gone


@pytest.fixture
def many_images(tmp_path) -> Path:
    folder = tmp_path / "images"
    for copy in range(COPIES):
        (folder / f"c{copy}").mkdir(parents=True)
        for image in IMAGES:
            shutil.copy(image, folder / f"c{copy}" / image.name)
    return folder


def first_line_then_close(*args: str) -> tuple[bytes, int, str]:
    """Run igcli with stdout to a pipe; read its first line, close the pipe, wait for it."""
    read_end, write_end = os.pipe()
    if hasattr(fcntl, "F_SETPIPE_SZ"):
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # one page: the writer blocks on the 6th record
    process = subprocess.Popen([sys.executable, "-m", "igcli", "explain", "-c", str(DIGITS_CONFIG), *args,
                                "--jsonl", "-", "--device", "cpu", "--steps", "8"],
                               cwd=REPO, stdout=write_end, stderr=subprocess.PIPE)
    os.close(write_end)
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(read_end, 1)
        assert byte, "igcli closed stdout before its first record"
        line += byte
    os.close(read_end)  # as `head -n 1` does
    _, stderr = process.communicate(timeout=300)
    return line, process.returncode, stderr.decode()


def test_a_closed_stdout_that_was_the_only_output_ends_the_run_quietly_with_141(many_images):
    line, code, stderr = first_line_then_close(str(many_images), "-q")
    assert json.loads(line)["relpath"] == "c0/eight_1438.png"
    assert code == 141, stderr
    assert stderr == ""


def test_a_closed_stdout_beside_o_keeps_writing_the_outputs_whole(many_images, tmp_path):
    out = tmp_path / "out"
    line, code, stderr = first_line_then_close(str(many_images), "-o", str(out))
    assert code == 0, stderr
    assert not any(word in stderr for word in ("igcli: error", "Broken pipe", "Traceback", "Exception")), stderr
    assert "96 inputs, 96 records, 0 failed" in stderr  # the summary line still reaches stderr
    records = [json.loads(text) for text in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == len(IMAGES) * COPIES and json.loads(line)["relpath"] == records[0]["relpath"]
    assert json.loads((out / "manifest.json").read_text())["state"] == "complete"
    assert len(list((out / "heatmaps").rglob("*.png"))) == len(IMAGES) * COPIES
    assert (out / "report.html").is_file()
