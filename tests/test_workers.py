"""--workers N and --device lists: worker processes write what one process writes, byte for byte
(timings aside); a worker's crash is retried once, then failed; signals and --resume as in one process."""
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from igcli.cli.commands import main
from igcli.errors import UsageError
from igcli.pipeline.workers import WORKER_ERROR, parse_devices, worker_plan

from .conftest import DIGITS_CONFIG, REPO, SAMPLE_DATA

TIMINGS = {"seconds", "compute_seconds", "started", "finished"}
SMALL_CHUNKS = ["--device", "cpu", "--set", "chunk_inputs=3", "--steps", "8"]  # several chunks from a dozen inputs


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _untimed(value):
    if isinstance(value, dict):
        return {key: "T" if key in TIMINGS else _untimed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_untimed(item) for item in value]
    return value


def output_tree(out: Path) -> dict[str, bytes]:
    """Every file below ``out``, with the values that are timings replaced: the rest must be equal."""
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".json":
            data = json.dumps(_untimed(json.loads(data))).encode()
        elif path.suffix == ".jsonl":
            data = b"\n".join(json.dumps(_untimed(json.loads(line))).encode() for line in data.splitlines())
        elif path.suffix == ".html":
            data = re.sub(rb"\d+(\.\d+)?\s*(s|ms)\b|\d{4}-\d\d-\d\dT[\d:+]+", b"T", data)
        files[path.relative_to(out).as_posix()] = data
    return files


def assert_same_tree(a: Path, b: Path) -> None:
    first, second = output_tree(a), output_tree(b)
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []


def test_two_workers_write_the_bytes_of_one_process_and_resume_a_cut_run(sample_tree, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", one, *SMALL_CHUNKS, "-q").exit_code == 0
    result = run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", two, *SMALL_CHUNKS, "-q", "--workers", 2)
    assert result.exit_code == 0, result.output
    assert len((one / "results.jsonl").read_text().splitlines()) == 12
    assert_same_tree(one, two)
    # A run cut after its first records: the workers redo the chunks --resume cannot reuse.
    lines = (two / "results.jsonl").read_text().splitlines(keepends=True)
    (two / "results.jsonl").write_text("".join(lines[:4]))
    result = run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", two, *SMALL_CHUNKS, "-q", "--workers", 2,
                 "--resume")
    assert result.exit_code == 0, result.output
    totals = json.loads((two / "manifest.json").read_text())["totals"]
    assert 3 <= totals["reused"] <= 4 and totals["inputs"] == 12
    manifest_one = json.loads((one / "manifest.json").read_text())
    assert totals | {"reused": 0, "seconds": 0, "compute_seconds": 0} == \
        manifest_one["totals"] | {"seconds": 0, "compute_seconds": 0}
    (two / "manifest.json").write_bytes((one / "manifest.json").read_bytes())  # its totals say reused
    assert_same_tree(one, two)


def test_text_documents_through_workers_match_one_process(tmp_path):
    config = REPO / "configs" / "questions.yaml"
    one, two = tmp_path / "one", tmp_path / "two"
    texts = SAMPLE_DATA / "texts"
    assert run("explain", "-c", config, texts, "-o", one, "-q", "--set", "chunk_inputs=4").exit_code == 0
    assert run("explain", "-c", config, texts, "-o", two, "-q", "--set", "chunk_inputs=4",
               "--workers", 2).exit_code == 0
    assert_same_tree(one, two)


CRASHING_FACTORY = '''
import multiprocessing, os, signal, sys
sys.path.insert(0, {models!r})
from digits_cnn import build_model as digits

GREY = (128 / 255 - 0.5) / 0.5  # a uniform grey input after the digits config's normalisation


class CrashesOnGrey(type(digits())):
    """The sample CNN, except that a worker process dies (SIGKILL) on a batch holding the grey input:
    every time, or once where CRASH_ONCE names a file that is not there yet."""

    def forward(self, x):
        grey = ((x - GREY).abs().flatten(1).amax(1) < 1e-4).any()
        if multiprocessing.parent_process() is not None and bool(grey):
            marker = os.environ.get("CRASH_ONCE")
            if marker is None or not os.path.exists(marker):
                if marker:
                    open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


def build_model():
    if os.environ.get("FAIL_IN_WORKERS") and multiprocessing.parent_process() is not None:
        raise RuntimeError("no weights for this worker")
    return CrashesOnGrey(*digits())
'''


def test_a_worker_crash_is_retried_once_on_another_then_fails_its_chunk_alone(sample_tree, tmp_path, monkeypatch):
    factory = tmp_path / "crashing.py"
    factory.write_text(CRASHING_FACTORY.format(models=str(SAMPLE_DATA / "models")))
    Image.new("L", (32, 32), 128).save(sample_tree / "zz_grey.png")
    flags = ["-c", DIGITS_CONFIG, sample_tree, *SMALL_CHUNKS, "-q", "--set", f"model.factory={factory}:build_model"]
    one, once, always = tmp_path / "one", tmp_path / "once", tmp_path / "always"
    assert run("explain", *flags, "-o", one).exit_code == 0  # in this process the model never dies

    monkeypatch.setenv("CRASH_ONCE", str(tmp_path / "crashed"))
    result = run("explain", *flags, "-o", once, "--workers", 2)
    assert (tmp_path / "crashed").exists(), "no worker died: the test tests nothing"
    assert result.exit_code == 0, result.output
    assert_same_tree(one, once)

    monkeypatch.delenv("CRASH_ONCE")
    result = run("explain", *flags, "-o", always, "--workers", 2)
    assert result.exit_code == 1
    records = [json.loads(line) for line in (always / "results.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (one / "results.jsonl").read_text().splitlines()]
    assert [r["relpath"] for r in records] == [r["relpath"] for r in reference]
    failed = [r for r in records if r["error"] is not None]
    assert "zz_grey.png" in [r["relpath"] for r in failed] and 1 <= len(failed) <= 6
    assert {r["error"]["type"] for r in failed} == {WORKER_ERROR}
    assert "died twice (killed by SIGKILL)" in failed[0]["error"]["message"]
    kept = {r["relpath"]: _untimed(r) for r in reference}
    assert all(_untimed(r) == kept[r["relpath"]] for r in records if r["error"] is None)
    assert json.loads((always / "manifest.json").read_text())["totals"]["failed"] == len(failed)


def test_a_worker_that_cannot_load_the_model_stops_the_run_with_exit_3(sample_tree, tmp_path, monkeypatch):
    factory = tmp_path / "crashing.py"
    factory.write_text(CRASHING_FACTORY.format(models=str(SAMPLE_DATA / "models")))
    monkeypatch.setenv("FAIL_IN_WORKERS", "1")
    result = CliRunner().invoke(main, ["explain", "-c", str(DIGITS_CONFIG), str(sample_tree), "-o",
                                       str(tmp_path / "out"), *SMALL_CHUNKS, "-q", "--workers", "2",
                                       "--set", f"model.factory={factory}:build_model"])
    assert result.exit_code == 3, result.output
    assert "no weights for this worker" in result.output and result.output.count("\n") == 1
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["state"] == "failed" and manifest["totals"]["records"] == 0


def test_sigterm_stops_workers_and_parent_as_one_process_does(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for copy in range(3):
        for image in sorted((SAMPLE_DATA / "images").glob("*.png")):
            shutil.copy(image, folder / f"{copy}_{image.name}")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "igcli", "explain", "-c", str(DIGITS_CONFIG), str(folder), "-o", str(out), "-q",
               "--steps", "256", "--batch-size", "16", "--device", "cpu", "--set", "chunk_inputs=2", "--workers", "2"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, children = time.monotonic() + 120, []
    while time.monotonic() < deadline and process.poll() is None:
        results = out / "results.jsonl"
        if results.exists() and results.read_bytes().count(b"\n") >= 2:
            children = _children(process.pid)
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["state"] == "interrupted" and "SIGTERM" in manifest["totals"]["stopped"]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert manifest["totals"]["records"] == len(records) < 36
    assert all((out / r["outputs"]["heatmap"]).exists() for r in records)
    assert not list(out.rglob(".*.tmp"))
    assert len(children) >= 2, "the run ended before its workers were seen"
    time.sleep(0.5)
    assert [pid for pid in children if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"] == []


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is missing")
@pytest.mark.parametrize("device", ["cuda:all", "cuda:0,cuda:1"])
def test_a_cuda_device_list_without_cuda_is_one_line_and_exit_2(device, sample_tree, tmp_path):
    with pytest.raises(UsageError, match="no CUDA device here"):
        parse_devices(device)
    result = CliRunner().invoke(main, ["explain", "-c", str(DIGITS_CONFIG), str(sample_tree), "-o",
                                       str(tmp_path / "out"), "--device", device])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and f"--device {device}: no CUDA device here" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["cuda:0,gpu:1", "cpu:0,cpu", "cuda:x,cuda:1", "cuda:0,"])
def test_a_malformed_device_list_is_a_usage_error(text):
    with pytest.raises(UsageError, match="is not cpu, cuda or cuda:N"):
        parse_devices(text)


def test_device_lists_and_worker_counts_make_the_plan(monkeypatch):
    assert parse_devices("cpu") is None and parse_devices("cuda:1") is None  # one device stays in the config
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert worker_plan(None, None, "cpu") is None and worker_plan(1, None, "cpu") is None
    plan = worker_plan(4, None, "cpu")
    assert plan.devices == ("cpu",) * 4 and plan.threads == 4
    assert worker_plan(None, ["cuda:0"], "cuda:0") is None  # cuda:all on one GPU: in-process
    plan = worker_plan(None, ["cuda:0", "cuda:2"], "cuda:0")
    assert plan.devices == ("cuda:0", "cuda:2") and plan.threads == 8
    plan = worker_plan(3, ["cuda:0", "cuda:2"], "cuda:0")  # workers go round the devices
    assert plan.devices == ("cuda:0", "cuda:2", "cuda:0") and plan.threads == 5
