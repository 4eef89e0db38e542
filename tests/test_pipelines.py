"""Inputs for pipelines and batch jobs: stdin, --files-from, --shard, --fail-fast / --max-errors."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from igcli.cli.commands import main
from igcli.data.discover import InputRef, in_shard
from igcli.pipeline.chunks import chunks as cut_chunks
from igcli.pipeline.chunks import name_hash

from .conftest import DIGITS_CONFIG, SAMPLE_DATA

IMAGES = sorted((SAMPLE_DATA / "images").glob("*.png"))


def run(*args, input=None, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, env=env, catch_exceptions=False)


def relpaths(stdout: str) -> list[str]:
    return [json.loads(line)["relpath"] for line in stdout.splitlines()]


def test_paths_from_stdin_and_from_a_file(tmp_path):
    listing = "\n".join(str(p) for p in IMAGES[:3]) + "\n\n"
    from_stdin = run("explain", "-c", DIGITS_CONFIG, "-", "--jsonl", "-", "-q", "--steps", 4, input=listing)
    assert from_stdin.exit_code == 0 and relpaths(from_stdin.stdout) == [p.name for p in IMAGES[:3]]
    (tmp_path / "list.txt").write_text(listing, encoding="utf-8")
    from_file = run("explain", "-c", DIGITS_CONFIG, "--files-from", tmp_path / "list.txt", IMAGES[5], "--jsonl", "-",
                    "-q", "--steps", 4)
    assert relpaths(from_file.stdout) == [IMAGES[5].name] + [p.name for p in IMAGES[:3]]


def test_shards_partition_the_inputs():
    seen = []
    for index in range(3):
        result = run("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "--jsonl", "-", "-q", "--steps", 4,
                     "--shard", f"{index}/3")
        assert result.exit_code == 0
        seen += relpaths(result.stdout)
    assert sorted(seen) == [p.name for p in IMAGES]
    assert run("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "--jsonl", "-", "--shard", "3/3").exit_code == 2


@settings(max_examples=100, deadline=None)
@given(names=st.lists(st.text(min_size=1, max_size=12), unique=True, max_size=40), count=st.integers(1, 9))
def test_shard_membership_is_a_partition(names, count):
    refs = [InputRef(Path("x"), name) for name in names]
    shards = [[ref.relpath for ref in refs if in_shard(ref, index, count)] for index in range(count)]
    assert sorted(name for shard in shards for name in shard) == sorted(names)


@settings(max_examples=200, deadline=None)
@given(count=st.integers(0, 300), size=st.integers(1, 40))
def test_chunks_keep_the_order_and_their_bounds_and_a_short_tail_joins_the_chunk_before(count, size):
    items = [SimpleNamespace(relpath=f"{index:05d}.png") for index in range(count)]
    chunks = list(cut_chunks(items, size))
    assert [item for chunk in chunks for item in chunk] == items
    window = size // 2 if size >= 16 else size  # half a chunk, where that leaves 2 names or more per bound
    cap, every = size + window, max(1, window // 4)
    assert all(len(chunk) <= cap for chunk in chunks)
    for chunk in chunks[:-2]:  # content-defined: ends at a name that hashes to 0, or at the cap
        assert len(chunk) >= size
        assert len(chunk) == cap or name_hash(chunk[-1].relpath) % every == 0
    if len(chunks) >= 2:
        assert len(chunks[-2]) >= size
        assert len(chunks[-1]) >= size or len(chunks[-2]) + len(chunks[-1]) > cap
    for in_flight in (2, 3):  # the last chunk in pieces of at most half a chunk, one per chunk in flight at least
        split = list(cut_chunks(items, size, in_flight))
        if not chunks:
            assert split == []
            continue
        before, last = split[: len(chunks) - 1], split[len(chunks) - 1 :]
        assert before == chunks[:-1] and [item for piece in last for item in piece] == chunks[-1]
        assert len(last) == min(len(chunks[-1]), max(in_flight, -(-2 * len(chunks[-1]) // size)))
        assert max(map(len, last)) - min(map(len, last)) <= 1 and max(map(len, last)) <= -(-size // 2)


@pytest.mark.parametrize("size", range(8, 97))
def test_chunk_bounds_follow_numbered_names_at_every_chunk_size(size):
    """Numbered names (00001.png...) are the common case. A chunk that finds no bound in its window
    (size // 2 items from 16 on) ends at its end, by position, and an added input then moves the
    bounds after it; with a well-mixed hash that is (1 - 4/window)^window, under 2%. zlib.crc32
    reached 42% at 32-35."""
    items = [SimpleNamespace(relpath=f"{index:05d}.png") for index in range(60 * size)]
    chunks = list(cut_chunks(items, size))[:-2]
    at_the_limit = sum(len(chunk) == size + (size // 2 if size >= 16 else size) for chunk in chunks)
    assert at_the_limit <= 0.08 * len(chunks)


def test_max_errors_and_fail_fast_stop_early_keeping_what_was_written(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a_bad.png", "b_bad.png", "c_bad.png"):
        (folder / name).write_text("not an image")
    (folder / "d_good.png").write_bytes(IMAGES[0].read_bytes())
    out = tmp_path / "out"
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", out, "--max-errors", 1, "--steps", 4)
    assert result.exit_code == 1 and "--max-errors 1" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["failed"] >= 2 and manifest["totals"]["stopped"]
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", tmp_path / "fast", "--fail-fast", "--steps", 4)
    assert result.exit_code == 1 and json.loads((tmp_path / "fast" / "manifest.json").read_text())["totals"]["stopped"]
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", tmp_path / "all", "--steps", 4)
    assert json.loads((tmp_path / "all" / "manifest.json").read_text())["totals"]["records"] == 1


def test_log_level_from_the_environment(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "bad.png").write_text("not an image")
    (folder / "good.png").write_bytes(IMAGES[0].read_bytes())
    loud = run("explain", "-c", DIGITS_CONFIG, folder, "-o", tmp_path / "a", "--steps", 4)
    quiet = run("explain", "-c", DIGITS_CONFIG, folder, "-o", tmp_path / "b", "--steps", 4,
                env={"IGCLI_LOG_LEVEL": "error"})
    assert "WARNING" in loud.stderr and "WARNING" not in quiet.stderr
