"""Unattended runs: --resume, kill -9, SIGINT/SIGTERM, the running manifest, the report, GPU OOM."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule
from igcli.backends.batching import BatchSize
from igcli.cli.commands import main
from igcli.config import load_config
from igcli.pipeline import resume
from igcli.pipeline.image_job import ImageJob
from igcli.results import report as report_module
from igcli.results import writer as writer_module
from igcli.runtime.options import RuntimeOptions

from .conftest import DIGITS_CONFIG, REPO, SAMPLE_DATA
from .nets import backend, small_cnn

IMAGES = sorted((SAMPLE_DATA / "images").glob("*.png"))
# Slow enough per input (256 steps, batches of 16) that a run can be stopped midway.
SLOW = ["--steps", "256", "--batch-size", "16"]


def slow_chunk() -> int:
    """Inputs per chunk under SLOW: --resume reuses whole chunks only, so a kill must come after one."""
    sets = [("steps=256", "--set"), ("batch_size=16", "--set"), ("device=cpu", "--set")]
    return ImageJob(load_config(DIGITS_CONFIG, sets)).chunk_size


def run(*args, options: RuntimeOptions | None = None):
    """The command line in this process; ``options``: how the run uses the machine (as a program passes them)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, obj=options)


def many_images(folder: Path, copies: int) -> Path:
    folder.mkdir()
    for copy in range(copies):
        for image in IMAGES:
            shutil.copy(image, folder / f"{copy}_{image.name}")
    return folder


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def totals(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["totals"]


def tree(out: Path) -> dict[str, bytes]:
    """Every output file, with the timings (the only thing allowed to differ) taken out."""
    files = {}
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out).as_posix()
        if path.is_dir() or relative == "manifest.json":
            continue
        data = path.read_bytes()
        if relative == "results.jsonl":
            data = b"".join(_untimed(line) + b"\n" for line in data.splitlines())
        elif relative.startswith("records/"):
            data = _untimed(data)
        files[relative] = data
    return files


def _untimed(data: bytes) -> bytes:
    record = json.loads(data)
    record.pop("seconds", None)
    return json.dumps(record, sort_keys=True).encode()


def start(folder: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "igcli", "explain", "-c", str(DIGITS_CONFIG), str(folder), "-o", str(out),
               "-q", *SLOW, *extra]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_records(process: subprocess.Popen, out: Path, count: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        results = out / "results.jsonl"
        if results.exists() and results.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.01)
    pytest.fail(f"the run ended or stalled before writing {count} records: {process.communicate()}")


def test_resume_reuses_what_still_matches_and_recomputes_the_rest(sample_tree, tmp_path, monkeypatch):
    out, small_chunks = tmp_path / "out", ["--steps", 8, "--set", "chunk_inputs=2"]  # chunks of 2 to 4 inputs
    assert run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", out, *small_chunks).exit_code == 0
    before = {r["input"]: r for r in lines(out)}
    changed, stripped = sample_tree / IMAGES[0].name, IMAGES[6].name
    changed.write_bytes(IMAGES[5].read_bytes())  # new bytes under an old name
    (out / "heatmaps" / stripped).unlink()  # an output file gone
    shutil.copy(IMAGES[2], sample_tree / "new.png")
    result = run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", out, *small_chunks, "--resume")
    assert result.exit_code == 0
    after = {r["input"]: r for r in lines(out)}
    reused = totals(out)["reused"]
    assert 5 <= reused <= 10 and totals(out)["inputs"] == 13 and f"({reused} reused)" in result.stderr
    assert after[str(changed)]["key"] != before[str(changed)]["key"]
    assert after[str(changed)]["target"]["label"] == IMAGES[5].name.split("_")[0]
    assert (out / "heatmaps" / stripped).exists()
    # A reused record is the very line written before, timings included.
    assert sum(after[source] == record for source, record in before.items()) == reused
    # Any change to the config (or model) recomputes everything.
    result = run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", out, "--steps", 9, "--resume")
    assert result.exit_code == 0 and totals(out)["reused"] == 0
    assert all(r["steps"] == 9 for r in lines(out))
    # Without --resume nothing is reused.
    assert run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", out, "--steps", 9).exit_code == 0
    assert totals(out)["reused"] == 0
    # Nor after an upgrade: another igcli may compute other numbers.
    assert run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", out, "--steps", 9, "--resume").exit_code == 0
    assert totals(out)["reused"] == 13
    # Other chunks put other inputs in each batch, and the last bits may differ: nothing reused.
    assert run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", out, "--steps", 9, "--set", "chunk_inputs=5",
               "--resume").exit_code == 0
    assert totals(out)["reused"] == 0
    monkeypatch.setattr(resume, "__version__", "99.0")
    assert run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", out, "--steps", 9, "--resume").exit_code == 0
    assert totals(out)["reused"] == 0


def test_resume_needs_an_output_folder(tmp_path):
    result = run("explain", "-c", DIGITS_CONFIG, IMAGES[0], "--jsonl", "-", "--resume")
    assert result.exit_code == 2 and "--resume" in result.stderr and "-o OUT_DIR" in result.stderr


def test_kill_9_then_resume_writes_the_same_tree_as_an_uninterrupted_run(tmp_path):
    folder = many_images(tmp_path / "images", 3)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run("explain", "-c", DIGITS_CONFIG, folder, "-o", whole, *SLOW).exit_code == 0
    chunk = slow_chunk()
    assert 2 <= chunk <= 12
    process = start(folder, killed)
    wait_for_records(process, killed, 2 * chunk + 1)  # the first chunk (at most 2 * chunk) is whole
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = (killed / "results.jsonl").read_text()
    assert 2 * chunk < written.count("\n") < 36, "the kill came too late to test anything"
    for line in written.splitlines():
        json.loads(line)  # no torn line
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", killed, *SLOW, "--resume")
    assert result.exit_code == 0 and totals(killed)["reused"] >= chunk
    assert not list(killed.rglob(".*.tmp"))
    assert tree(killed) == tree(whole)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_finishes_the_inputs_in_flight_writes_the_manifest_and_exits_128_plus_it(tmp_path, signum, code):
    folder = many_images(tmp_path / "images", 3)
    out = tmp_path / "out"
    process = start(folder, out)
    wait_for_records(process, out, 2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["state"] == "interrupted" and signal.Signals(signum).name in manifest["totals"]["stopped"]
    records = lines(out)
    assert manifest["totals"]["records"] == len(records) < 36
    assert all((out / r["outputs"]["heatmap"]).exists() for r in records)
    assert not list(out.rglob(".*.tmp"))
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", out, *SLOW, "--resume")
    assert result.exit_code == 0 and totals(out)["inputs"] == 36
    assert json.loads((out / "manifest.json").read_text())["state"] == "complete"


def test_the_manifest_is_rewritten_with_running_totals(tmp_path, monkeypatch):
    written = []
    real = writer_module.write_bytes_atomic

    def spy(path, data):
        if path.name == "manifest.json":
            written.append(json.loads(data))
        real(path, data)

    monkeypatch.setattr(writer_module, "write_bytes_atomic", spy)
    folder = many_images(tmp_path / "images", 1)
    assert run("explain", "-c", DIGITS_CONFIG, folder, "-o", tmp_path / "out", "--steps", 4,
               "--batch-size", 6, options=RuntimeOptions(manifest_every=0.0)).exit_code == 0
    running = [m for m in written if m["state"] == "running"]
    assert len(running) >= 3 and running[-1]["finished"] is None
    counts = [m["totals"]["records"] for m in running]
    assert counts == sorted(counts) and counts[0] < 12
    assert written[-1]["state"] == "complete" and written[-1]["totals"]["records"] == 12


def test_report_is_one_escaped_page_and_can_be_rebuilt(sample_tree, tmp_path, monkeypatch):
    hostile = sample_tree / "<img src=x onerror=alert(1)>.png"
    shutil.copy(IMAGES[0], hostile)
    (sample_tree / "broken.png").write_text("<b>not</b> an image")
    out = tmp_path / "out"
    read_back: list[Path] = []
    real_thumbnail = report_module._file_thumbnail
    monkeypatch.setattr(report_module, "_file_thumbnail", lambda path: read_back.append(path) or real_thumbnail(path))
    assert run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", out, "--steps", 8).exit_code == 1
    # The run made its thumbnails while it held the images: nothing was read back.
    assert read_back == []
    page = (out / "report.html").read_text()
    assert "<img src=x onerror" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<b>not</b>" not in page
    assert page.count("<tr data-status=") == 14 and page.count('<tr data-status="failed">') == 1
    assert page.count('<img alt="" src="data:image/jpeg;base64,') == 2 * 13  # input and heatmap
    assert "http://" not in page and "https://" not in page and "src=\"/" not in page
    header_cells = page.split("<thead>")[1].split("</thead>")[0].count("<th>")
    rows = page.split("<tbody>")[1].split("</tbody>")[0].strip().splitlines()
    assert all(row.count("<td ") == header_cells for row in rows)
    (out / "report.html").unlink()
    result = run("report", out)  # every thumbnail from its file: the same page
    assert result.exit_code == 0 and (out / "report.html").read_text() == page
    assert len(read_back) == 2 * 13
    assert run("report", tmp_path).exit_code == 2
    monkeypatch.setattr(report_module, "MAX_THUMBNAILS", 3)  # a big run keeps the page small
    assert run("report", out).exit_code == 0
    page = (out / "report.html").read_text()
    pictured = sum(r["error"] is None for r in lines(out)[:3])
    assert page.count("data:image/jpeg;base64,") == 2 * pictured and "pictures for the first 3 rows only" in page


def test_thumbnails_made_by_threads_are_kept_on_disk_up_to_the_cap(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    monkeypatch.setattr(report_module, "MAX_THUMBNAILS", 40)
    g = torch.Generator().manual_seed(0)
    images = [Image.fromarray(torch.randint(0, 256, (48, 48, 3), generator=g, dtype=torch.uint8).numpy())
              for _ in range(50)]
    made = report_module.Thumbnails()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: made.add_heatmap(f"heatmaps/{n}.png", images[n]), range(50)))
        list(pool.map(lambda n: made.add_input(f"in/{n % 10}.png", images[n % 10]), range(50)))
    kept = [n for n in range(50) if made._made("heatmap", f"heatmaps/{n}.png") is not None]
    assert len(kept) == 40  # the cap; the rest come from their files
    for n in kept:
        assert made.heatmap(f"heatmaps/{n}.png", tmp_path) == report_module.thumbnail(images[n])
    for n in range(10):  # one per input, however many records it has
        assert made.input(f"in/{n}.png") == report_module.thumbnail(images[n])
    sizes = [length for _, length in made._where.values()]
    assert len(sizes) == 50 and os.fstat(made._spool.fileno()).st_size == sum(sizes)  # the bytes are in the file
    assert made.heatmap("heatmaps/missing.png", tmp_path) == ""  # neither made nor on disk
    made.close()
    assert made._spool is None


def test_report_shows_coloured_words_for_texts(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("who wrote <script>alert(1)</script> ?", encoding="utf-8")
    out = tmp_path / "out"
    result = run("explain", "-c", REPO / "configs" / "questions.yaml", texts, "-o", out)
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text(encoding="utf-8")
    assert '<div class="words"><span class="w"' in page and "<script>alert" not in page


class MemoryLimited:
    """A real backend on a device that holds at most ``limit`` points: larger batches raise OOM."""

    def __init__(self, inner, limit: int):
        self.inner, self.limit, self.sizes = inner, limit, []
        self.device, self.dtype, self.score_kind = inner.device, inner.dtype, inner.score_kind

    def scores(self, x):
        return self.inner.scores(x)

    def scores_and_grads(self, x, weights):
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner.scores_and_grads(x, weights)


def test_out_of_memory_halves_the_batch_for_the_rest_of_the_run(caplog):
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    base = torch.zeros(4, 1, 1, 8, 8, dtype=torch.float64)
    quad = Quadrature(Rule.riemann_trapezoid, 32)
    expected = attribute(backend(small_cnn()), x, base, TargetSpec("index", 1), quad, batch_size=8)
    limited, batch = MemoryLimited(backend(small_cnn()), 10), BatchSize(64)
    with caplog.at_level(logging.WARNING, logger="igcli"):
        first = attribute(limited, x, base, TargetSpec("index", 1), quad, batch_size=batch)
        second = attribute(limited, x, base, TargetSpec("index", 1), quad, batch_size=batch)
    assert batch.points == 8
    for a, b, c in zip(expected, first, second):
        torch.testing.assert_close(a.attributions, b.attributions, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(a.attributions, c.attributions, rtol=1e-12, atol=1e-15)
    assert max(limited.sizes[len(limited.sizes) // 2:]) <= 8  # the second call never tried a larger batch
    assert sum("out of device memory" in r.message for r in caplog.records) == 1


def test_a_single_point_that_does_not_fit_is_a_model_failure_not_a_loop():
    limited = MemoryLimited(backend(small_cnn()), 0)
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        attribute(limited, x, torch.zeros(1, 1, 1, 8, 8, dtype=torch.float64), TargetSpec("index", 0),
                Quadrature(Rule.riemann_trapezoid, 4), batch_size=BatchSize(4))


def test_signal_handlers_are_restored_after_a_run(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert run("explain", "-c", DIGITS_CONFIG, IMAGES[0], "-o", tmp_path / "out", "--steps", 4).exit_code == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert os.path.exists(tmp_path / "out" / "report.html")


def test_writer_threads_write_the_same_tree_in_the_same_order(sample_tree, tmp_path):
    assert run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", tmp_path / "serial", "--steps", 8,
               options=RuntimeOptions(writer_threads=0)).exit_code == 0
    assert run("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", tmp_path / "pool", "--steps", 8,
               options=RuntimeOptions(writer_threads=2)).exit_code == 0
    assert tree(tmp_path / "pool") == tree(tmp_path / "serial")
