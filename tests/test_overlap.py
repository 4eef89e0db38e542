"""Chunks in flight (igcli/pipeline/overlap.py): order, concurrency, errors, early exits, same outputs."""
import functools
import json
import threading

import pytest
import torch

from igcli.backends.memory import MAX_POINTS
from igcli.config import load_config
from igcli.pipeline import run as run_module
from igcli.pipeline.image_job import ImageJob
from igcli.pipeline.overlap import chunks_in_flight, ordered_map, own_stream, points_per_chunk, threads_shared
from igcli.runtime.options import RuntimeOptions

from .conftest import DIGITS_CONFIG, REPO, SAMPLE_DATA
from .test_operations import many_images, run, tree

QUESTIONS_CONFIG = REPO / "configs" / "questions.yaml"
TEXTS = SAMPLE_DATA / "texts"


def test_results_come_in_input_order_with_several_in_flight():
    def slow_for_even(n):
        threading.Event().wait(0.02 if n % 2 == 0 else 0)
        return n * n

    assert list(ordered_map(slow_for_even, range(12), 3)) == [(n, n * n) for n in range(12)]
    assert list(ordered_map(slow_for_even, range(5), 1)) == [(n, n * n) for n in range(5)]


def test_works_overlap_up_to_in_flight():
    meeting = threading.Barrier(2, timeout=10)  # breaks (and fails the test) unless two run at once
    running, peak, lock = [0], [0], threading.Lock()

    def work(n):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        meeting.wait()
        with lock:
            running[0] -= 1
        return n

    assert [n for n, _ in ordered_map(work, range(6), 2)] == list(range(6))
    assert peak[0] == 2


def test_a_thread_that_finishes_first_starts_the_next_work_without_waiting_for_the_oldest():
    third_started = threading.Event()

    def work(n):
        if n == 0:  # the oldest work, still running when the second ends
            assert third_started.wait(timeout=10), "the third work waited for the first"
        if n == 2:
            third_started.set()
        return n

    assert [n for n, _ in ordered_map(work, range(5), 2)] == list(range(5))


def test_a_failing_work_raises_at_its_item_after_the_ones_before_it():
    def work(n):
        if n == 3:
            raise ValueError("item 3")
        return n

    seen = []
    with pytest.raises(ValueError, match="item 3"):
        for n, _ in ordered_map(work, range(8), 2):
            seen.append(n)
    assert seen == [0, 1, 2]


def test_leaving_early_starts_no_more_work_and_waits_for_the_running_one():
    started, finished = [], []

    def work(n):
        started.append(n)
        threading.Event().wait(0.05)
        finished.append(n)
        return n

    outcomes = ordered_map(work, range(100), 2)
    for n, _ in outcomes:
        if n == 2:
            break
    outcomes.close()
    assert len(started) <= 5 and sorted(finished) == sorted(started)


def test_two_chunks_on_a_cpu_of_several_cores_one_elsewhere_unless_asked(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert chunks_in_flight(cpu, "torch") == 2
    assert chunks_in_flight(cuda, "torch") == chunks_in_flight(cpu, "onnxruntime") == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert chunks_in_flight(cpu, "torch") == 1
    assert chunks_in_flight(cpu, "torch", 3) == chunks_in_flight(cuda, "torch", 3) == 3


def test_chunks_in_flight_share_the_batch_on_the_cpu_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert points_per_chunk(128, 2, cpu) == 64 and points_per_chunk(1, 2, cpu) == 1
    assert points_per_chunk(128, 1, cpu) == points_per_chunk(128, 2, cuda) == 128


def test_chunks_in_flight_split_the_threads_for_the_block_only():
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with threads_shared(2, torch.device("cpu")):
            seen = [n for _, n in ordered_map(lambda _: torch.get_num_threads(), range(4), 2)]
            assert torch.get_num_threads() == 2 and seen == [2, 2, 2, 2]
        assert torch.get_num_threads() == 4
        with threads_shared(1, torch.device("cpu")), threads_shared(2, torch.device("cuda")):
            assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(threads)


def test_a_run_puts_the_jobs_chunks_in_flight_its_last_chunk_in_as_many_pieces(tmp_path, monkeypatch):
    asked, sizes = [], []

    def recording(work, items, in_flight):
        asked.append(in_flight)
        items = list(items)
        sizes.append([len(chunk) for chunk in items])
        return ordered_map(work, items, in_flight)

    monkeypatch.setattr(run_module, "ordered_map", recording)
    job = ImageJob(load_config(DIGITS_CONFIG, [("device=cpu", "--set")]))
    images = len(list((SAMPLE_DATA / "images").glob("*.png")))
    assert images <= job.chunk_size  # one chunk, and the last
    assert run("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", tmp_path / "out").exit_code == 0
    assert asked == [job.in_flight] == [2 if torch.get_num_threads() >= 2 else 1]
    assert job.batch.points == 128 // job.in_flight
    half = -(-images // job.in_flight)
    assert sizes == [[half, images - half] if job.in_flight == 2 else [images]]


@pytest.mark.parametrize("config", [DIGITS_CONFIG, QUESTIONS_CONFIG], ids=["image", "text"])
def test_model_threads_set_torchs_threads_and_so_the_chunks_in_flight(config):
    from igcli.pipeline.jobs import make_job

    threads = torch.get_num_threads()
    try:
        for asked, in_flight in ((1, 1), (4, 2)):
            job = make_job(load_config(config, [("device=cpu", "--set"), (f"model.threads={asked}", "--set")]))
            assert (torch.get_num_threads(), job.in_flight) == (asked, in_flight)
            configured = load_config(config).batch_size  # the sample image config sets it; text: auto
            # Text auto: the sample model's activations are small, so the measured batch is the cap
            # (tests/test_text_memory.py).
            assert job.batch.points == (MAX_POINTS if configured == "auto" else configured) // in_flight
    finally:
        torch.set_num_threads(threads)


def test_own_stream_is_a_no_op_on_the_cpu():
    with own_stream(torch.device("cpu")):
        assert torch.ones(2).sum() == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_each_thread_runs_on_its_own_cuda_stream():
    device = torch.device("cuda")
    seen = {}

    def record(name):
        for _ in range(2):
            with own_stream(device):
                seen.setdefault(name, set()).add(torch.cuda.current_stream(device).cuda_stream)
        return name

    list(ordered_map(record, ["a", "b", "c", "d"], 2))
    default = torch.cuda.default_stream(device).cuda_stream
    assert all(len(streams) == 1 and default not in streams for streams in seen.values())
    assert torch.cuda.current_stream(device).cuda_stream == default


def test_chunks_in_flight_write_what_the_same_chunks_one_at_a_time_write(tmp_path, monkeypatch):
    folder = many_images(tmp_path / "images", 2)
    small_chunks = ["--steps", 8, "--batch-size", 16]  # 24 inputs in ~12 chunks
    two = RuntimeOptions(chunks_in_flight=2)
    one_at_a_time = functools.partial(ordered_map, in_flight=1)
    with monkeypatch.context() as patch:
        patch.setattr(run_module, "ordered_map", lambda work, items, in_flight: one_at_a_time(work, items))
        assert run("explain", "-c", DIGITS_CONFIG, folder, "-o", tmp_path / "one", *small_chunks,
                   options=two).exit_code == 0
    assert run("explain", "-c", DIGITS_CONFIG, folder, "-o", tmp_path / "two", *small_chunks, options=two).exit_code == 0
    assert tree(tmp_path / "two") == tree(tmp_path / "one")
    # --resume reuses every chunk, in flight as well.
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", tmp_path / "two", *small_chunks, "--resume",
                 options=two)
    assert result.exit_code == 0 and "(24 reused)" in result.stderr
    assert tree(tmp_path / "two") == tree(tmp_path / "one")


def test_text_chunks_in_flight_write_what_the_same_chunks_one_at_a_time_write(tmp_path, monkeypatch):
    # Documents of several lengths, two per chunk: chunks in flight call the model at once with
    # embeddings of different shapes.
    small_chunks = ["--set", "chunk_inputs=2", "--steps", 8]
    two = RuntimeOptions(chunks_in_flight=2)
    one_at_a_time = functools.partial(ordered_map, in_flight=1)
    with monkeypatch.context() as patch:
        patch.setattr(run_module, "ordered_map", lambda work, items, in_flight: one_at_a_time(work, items))
        result = run("explain", "-c", QUESTIONS_CONFIG, TEXTS, "-o", tmp_path / "one", *small_chunks, options=two)
        assert result.exit_code == 0 and ", 0 failed" in result.stderr
    result = run("explain", "-c", QUESTIONS_CONFIG, TEXTS, "-o", tmp_path / "two", *small_chunks, options=two)
    assert result.exit_code == 0 and ", 0 failed" in result.stderr
    assert tree(tmp_path / "two") == tree(tmp_path / "one")


def test_a_stop_with_chunks_in_flight_keeps_what_was_written(tmp_path):
    folder = many_images(tmp_path / "images", 3)  # the stop must come before the last chunk, which takes a short tail
    for index in range(6):
        (folder / f"{index}_bad.png").write_text("not an image")
    out = tmp_path / "out"
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", out, "--max-errors", 2, "--steps", 4,
                 "--batch-size", 6, options=RuntimeOptions(chunks_in_flight=2))  # chunks of 4 inputs
    assert result.exit_code == 1 and "--max-errors 2" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert manifest["state"] == "stopped" and manifest["totals"]["failed"] >= 3
    assert manifest["totals"]["inputs"] == len(records) < 42
    assert all((out / r["outputs"]["heatmap"]).exists() for r in records if r.get("error") is None)
