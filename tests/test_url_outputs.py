"""-o to an fsspec store: the files of a local run, resumed from the store, a lock in the store,
names that stay below the output prefix, and a store that fails mid-run without losing anything.
Real filesystems throughout: fsspec's memory store, a memory store whose writes are not atomic
(so files go to a temporary key, then move), and S3 through moto's local server where installed."""
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path, PurePosixPath

import fsspec
import pytest
from click.testing import CliRunner
from fsspec.implementations.memory import MemoryFileSystem

from igcli.cli.commands import main
from igcli.results.store import OutputStore, output_target
from igcli.runtime.options import RuntimeOptions

from .conftest import DIGITS_CONFIG, SAMPLE_DATA

FAST = ["--device", "cpu", "--steps", "8", "-q"]
IMAGES = sorted((SAMPLE_DATA / "images").glob("*.png"))


class MovingMemory(MemoryFileSystem):
    """A memory store of its own that igcli does not count as atomic: files go to a temporary key
    first. ``fail_after`` puts succeed, then every put fails as an unreachable store does."""

    protocol = "igclimoving"
    store: dict = {}
    pseudo_dirs = [""]
    fail_after: int | None = None
    puts = 0

    def _count(self):
        type(self).puts += 1
        if self.fail_after is not None and self.puts > self.fail_after:
            raise ConnectionError("injected: the store stopped answering")

    def put_file(self, lpath, rpath, *args, **kwargs):
        self._count()
        return super().put_file(lpath, rpath, *args, **kwargs)

    def pipe_file(self, path, value, *args, **kwargs):
        self._count()
        return super().pipe_file(path, value, *args, **kwargs)


class ReadOnlyMemory(MemoryFileSystem):
    protocol = "igclireadonly"
    store: dict = {}
    pseudo_dirs = [""]

    def _open(self, path, mode="rb", *args, **kwargs):
        if "r" not in mode:
            raise PermissionError(f"{path}: access denied")
        return super()._open(path, mode, *args, **kwargs)


fsspec.register_implementation("igclimoving", MovingMemory, clobber=True)
fsspec.register_implementation("igclireadonly", ReadOnlyMemory, clobber=True)


def run(*args, options=None):
    return CliRunner().invoke(main, [str(a) for a in args], obj=options)


@pytest.fixture(autouse=True)
def clean_stores(tmp_path, monkeypatch):
    """Empty stores; staging folders made in a temp dir of the test's own, to see them go."""
    staging_parent = tmp_path / "system-tmp"
    staging_parent.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(staging_parent))
    MovingMemory.fail_after, MovingMemory.puts = None, 0
    yield staging_parent
    for fs_class in (MemoryFileSystem, MovingMemory, ReadOnlyMemory):
        fs_class.store.clear()
        fs_class.pseudo_dirs[:] = [""]


def tree(fs, root: str) -> dict[str, bytes]:
    """Every file below ``root`` in ``fs``, by its path below it."""
    return {key[len(root) + 1:]: fs.cat_file(key) for key in fs.find(root)}


def local_tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def records(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines()]


def comparable(files: dict[str, bytes]) -> dict:
    """Files and records as two runs must agree on them: timings and dates aside."""
    untimed = {name: data for name, data in files.items()
               if name.startswith(("heatmaps/", "attributions/", "summary/"))}
    untimed["records"] = [{k: v for k, v in r.items() if k != "seconds"} for r in records(files["results.jsonl"])]
    untimed["record files"] = {name: {k: v for k, v in json.loads(data).items() if k != "seconds"}
                               for name, data in files.items() if name.startswith("records/")}
    return untimed


@pytest.mark.parametrize("url", ["memory://igcli-out/runs/x", "igclimoving://igcli-out/runs/x"])
def test_a_run_to_a_store_writes_the_files_of_a_local_run_and_leaves_nothing_behind(url, tmp_path, clean_stores):
    local = tmp_path / "local"
    assert run("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", local, *FAST).exit_code == 0
    result = run("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", url, *FAST)
    assert result.exit_code == 0, result.output
    fs, root = fsspec.core.url_to_fs(url)
    stored = tree(fs, root)
    assert set(stored) == set(local_tree(local)) - {".igcli.lock"}  # no lock, no temporary keys
    assert comparable(stored) == comparable(local_tree(local))
    assert len(records(stored["results.jsonl"])) == 12
    assert json.loads(stored["manifest.json"])["state"] == "complete"
    assert b"<table" in stored["report.html"]
    assert list(clean_stores.iterdir()) == []  # the staging folder is gone
    assert not any(key.startswith("/igcli-out/") is False for key in fs.find("/"))  # nothing outside -o


def test_resume_from_the_store_finishes_a_run_stopped_by_max_errors(tmp_path):
    folder, small_chunks = tmp_path / "in", ["--set", "chunk_inputs=2"]
    folder.mkdir()
    for image in IMAGES:
        shutil.copy(image, folder / image.name)
    (folder / "nine_broken.png").write_bytes(b"not a png")  # sorted mid-way: the run stops there
    url = "memory://igcli-out/resumed"
    stopped = run("explain", "-c", DIGITS_CONFIG, folder, "-o", url, *FAST, *small_chunks, "--fail-fast")
    assert stopped.exit_code == 1
    fs = fsspec.filesystem("memory")
    partial = tree(fs, "/igcli-out/resumed")
    assert json.loads(partial["manifest.json"])["state"] == "stopped"
    done = [r for r in records(partial["results.jsonl"]) if r["error"] is None]
    assert 2 <= len(done) < 12
    for record in done:  # every record in the store has its files there
        assert set(record["outputs"].values()) <= set(partial)
    (folder / "nine_broken.png").unlink()
    resumed = run("explain", "-c", DIGITS_CONFIG, folder, "-o", url, *FAST, *small_chunks, "--resume")
    assert resumed.exit_code == 0, resumed.output
    finished = tree(fs, "/igcli-out/resumed")
    assert json.loads(finished["manifest.json"])["totals"]["reused"] >= 2
    lines = records(finished["results.jsonl"])
    assert [line for line in lines if line["relpath"] in {r["relpath"] for r in done}] == done  # reused as written
    local = tmp_path / "local"
    assert run("explain", "-c", DIGITS_CONFIG, folder, "-o", local, *FAST, *small_chunks).exit_code == 0
    assert comparable(finished) == comparable(local_tree(local))


def test_a_store_that_fails_mid_run_stops_it_and_keeps_every_output_in_staging(clean_stores):
    MovingMemory.fail_after = 12  # the first checkpoint and a few files
    result = run("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", "igclimoving://igcli-out/x", *FAST,
                 "--set", "chunk_inputs=2", options=RuntimeOptions(manifest_every=0.0))  # a checkpoint a chunk
    assert result.exit_code == 1
    message = result.output.strip()
    assert "\n" not in message and "injected: the store stopped answering" in message
    (staging,) = clean_stores.iterdir()
    assert f"kept in {staging}" in message
    staged = [json.loads(line) for line in (staging / "results.jsonl").read_text().splitlines()]
    assert 0 < len(staged) < 12 and json.loads((staging / "manifest.json").read_text())["state"] == "failed"
    for record in staged:  # nothing written is lost: the records and their files are in staging
        assert all((staging / relative).is_file() for relative in record["outputs"].values())
    in_store = tree(MovingMemory(), "/igcli-out/x")
    for record in records(in_store.get("results.jsonl", b"")):  # the store's records have their files
        assert set(record["outputs"].values()) <= set(in_store)


@pytest.mark.parametrize("url,message", [
    ("igclireadonly://igcli-out/x", ".igcli.lock: access denied); check the URL and its credentials"),
    ("nosuchfs://bucket/x", "fsspec knows no 'nosuchfs' filesystem"),
    pytest.param("gs://bucket/x", "pip install it", marks=pytest.mark.skipif(
        importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")),
])
def test_a_store_that_cannot_be_written_is_one_line_and_exit_2_before_anything_runs(url, message, clean_stores):
    result = run("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", url, *FAST)
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1
    assert list(clean_stores.iterdir()) == [] and ReadOnlyMemory.store == {}


def test_one_run_at_a_time_per_store_folder_and_a_stale_lock_is_taken_over():
    fs, lock = fsspec.filesystem("memory"), "/igcli-out/x/.igcli.lock"
    alive = {"host": socket.gethostname(), "pid": os.getpid(), "run": "other", "alive": time.time()}
    fs.pipe_file(lock, json.dumps(alive).encode())
    held = run("explain", "-c", DIGITS_CONFIG, IMAGES[0], "-o", "memory://igcli-out/x", *FAST)
    assert held.exit_code == 2 and f"another igcli run (host {alive['host']}, pid {os.getpid()})" in held.output
    assert fs.find("/igcli-out/x") == [lock]  # nothing written
    fs.pipe_file(lock, json.dumps(alive | {"alive": time.time() - 3600}).encode())  # a run that died an hour ago
    taken = run("explain", "-c", DIGITS_CONFIG, IMAGES[0], "-o", "memory://igcli-out/x", *FAST)
    assert taken.exit_code == 0 and not fs.exists(lock)
    assert len(records(fs.cat_file("/igcli-out/x/results.jsonl"))) == 1


HOSTILE = ["..png", " spaced .png", "a%2F..%2Fb.png", "back\\slash.png", "ünï cødé.png", "-dash.png",
           "new\nline.png"]


def test_hostile_input_names_and_store_keys_stay_below_the_output_prefix(tmp_path, clean_stores):
    folder = tmp_path / "in"
    (folder / "deep" / "..." ).mkdir(parents=True)
    for index, name in enumerate(HOSTILE):
        shutil.copy(IMAGES[index], folder / ("deep/.../" if index % 2 else "") / name)
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/igcli-out/x/../escaped.txt", b"planted")  # a key no igcli run writes
    url = "memory://igcli-out/x"
    assert run("explain", "-c", DIGITS_CONFIG, folder, "-o", url, *FAST).exit_code == 0
    local = tmp_path / "local"
    assert run("explain", "-c", DIGITS_CONFIG, folder, "-o", local, *FAST).exit_code == 0
    written = set(fs.find("/")) - {"/igcli-out/escaped.txt", "/igcli-out/x/../escaped.txt"}
    assert all(key.startswith("/igcli-out/x/") for key in written)
    assert {key[len("/igcli-out/x/"):] for key in written} == set(local_tree(local)) - {".igcli.lock"}
    assert run("explain", "-c", DIGITS_CONFIG, folder, "-o", url, *FAST, "--resume").exit_code == 0
    assert json.loads(fs.cat_file("/igcli-out/x/manifest.json"))["totals"]["reused"] == len(HOSTILE)
    assert not (tmp_path.parent / "escaped.txt").exists() and list(clean_stores.iterdir()) == []


def test_a_file_url_or_a_path_is_written_in_place():
    assert output_target("file:///tmp/runs/x") == Path("/tmp/runs/x")
    assert output_target("runs/x") == Path("runs/x")
    store = output_target("memory://runs/x/")
    assert isinstance(store, OutputStore) and store.root == "/runs/x" and store.atomic_put
    for hostile in ("../x", "a/../../b", "/abs", "a//b", ""):
        with pytest.raises(ValueError):
            store.key(hostile)


needs_s3 = pytest.mark.skipif(importlib.util.find_spec("s3fs") is None or importlib.util.find_spec("moto") is None,
                              reason="pip install 'igcli[s3test]' (s3fs, moto[s3], flask, flask-cors)")


@pytest.fixture
def s3(monkeypatch):
    """A local S3 API server (moto) and an empty bucket in it; the AWS_* variables point
    s3fs at it. moto keeps its buckets for the whole process: each test has one of its own."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(name, value)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    bucket = f"igcli-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    yield fs, bucket
    server.stop()


@needs_s3
def test_s3_through_a_local_s3_server(s3, tmp_path):
    s3, bucket = s3
    local = tmp_path / "local"
    assert run("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", local, *FAST).exit_code == 0
    result = run("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", f"s3://{bucket}/runs/x", *FAST)
    assert result.exit_code == 0, result.output
    s3.invalidate_cache()
    stored = tree(s3, f"{bucket}/runs/x")
    assert comparable(stored) == comparable(local_tree(local))
    assert ".igcli.lock" not in stored
    resumed = run("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", f"s3://{bucket}/runs/x",
                  *FAST, "--resume")
    assert resumed.exit_code == 0
    s3.invalidate_cache()
    assert json.loads(s3.cat_file(f"{bucket}/runs/x/manifest.json"))["totals"]["reused"] == 12


@needs_s3
def test_sigterm_puts_every_record_written_in_the_store(s3, tmp_path, clean_stores):
    s3, bucket = s3
    folder = tmp_path / "in"
    folder.mkdir()
    for copy in range(3):
        for image in IMAGES:
            shutil.copy(image, folder / f"{copy}_{image.name}")
    staging_parent = clean_stores
    env = os.environ | {"TMPDIR": str(staging_parent), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # Slow inputs (1,024 steps): the signal comes mid-run, and the run only ends its chunk of two.
    process = subprocess.Popen(
        [sys.executable, "-m", "igcli", "explain", "-c", str(DIGITS_CONFIG), str(folder), "-o",
         f"s3://{bucket}/runs/sig", "--device", "cpu", "--steps", "1024", "--batch-size", "16",
         "--set", "chunk_inputs=2", "-q"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:  # the first checkpoint with a record
        s3.invalidate_cache()
        if s3.exists(f"{bucket}/runs/sig/results.jsonl") and s3.cat_file(f"{bucket}/runs/sig/results.jsonl"):
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    s3.invalidate_cache()
    stored = tree(s3, f"{bucket}/runs/sig")
    written = records(stored["results.jsonl"])
    assert json.loads(stored["manifest.json"])["state"] == "interrupted"
    assert 0 < len(written) < 36 and json.loads(stored["manifest.json"])["totals"]["records"] == len(written)
    for record in written:
        assert set(record["outputs"].values()) <= set(stored)
    assert ".igcli.lock" not in stored and list(staging_parent.iterdir()) == []


def test_summary_and_diff_read_a_run_in_a_store(tmp_path, clean_stores):
    local = tmp_path / "local"
    assert run("explain", "-c", DIGITS_CONFIG, *IMAGES[:4], "-o", local, *FAST).exit_code == 0
    fs, url = fsspec.filesystem("memory"), "memory://igcli-out/run"
    for name, data in local_tree(local).items():
        if name != "summary.json" and not name.startswith(("summary/", ".")):
            fs.pipe_file(f"/igcli-out/run/{name}", data)
    assert run("summary", url).exit_code == 0
    assert fs.cat_file("/igcli-out/run/summary.json") == (local / "summary.json").read_bytes()
    assert fs.cat_file("/igcli-out/run/summary/class_8.npy") == (local / "summary" / "class_8.npy").read_bytes()
    result = run("diff", url, local, "-o", tmp_path / "diff", "--fail-on", "rank_corr<0.999")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "diff" / "diff.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(row["match"] == "both" and row["drift"] == pytest.approx(0.0, abs=1e-12)
                                  for row in rows)
    missing = run("summary", "memory://igcli-out/nothing-here")
    assert missing.exit_code == 2 and "no results.jsonl" in missing.output
    assert list(clean_stores.iterdir()) == []  # the runs brought in are gone


def test_an_earlier_run_in_the_store_is_not_taken_for_inputs():
    fs = fsspec.filesystem("memory")
    for image in IMAGES:
        fs.pipe_file(f"/igcli-data/{image.name}", image.read_bytes())
    url = "memory://igcli-data/runs/x"
    assert run("explain", "-c", DIGITS_CONFIG, "memory://igcli-data", "-o", url, *FAST).exit_code == 0
    again = run("explain", "-c", DIGITS_CONFIG, "memory://igcli-data", "-o", url, *FAST)
    assert again.exit_code == 0, again.output
    relpaths = [r["relpath"] for r in records(fs.cat_file("/igcli-data/runs/x/results.jsonl"))]
    assert relpaths == [image.name for image in IMAGES]  # not runs/x/heatmaps/*.png


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="output.format parquet needs pyarrow")
def test_a_rerun_with_fewer_chunks_leaves_no_parquet_part_of_the_earlier_run_in_the_store(tmp_path):
    import pyarrow.parquet as pq

    parquet, url = ["--set", "output.format=parquet", "--set", "chunk_inputs=2"], "memory://igcli-out/parts"
    fs = fsspec.filesystem("memory")

    def parts() -> list[str]:
        return sorted(PurePosixPath(key).name for key in fs.find("/igcli-out/parts/results.parquet"))

    assert run("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", url, *FAST, *parquet).exit_code == 0
    many = parts()
    few, local = tmp_path / "few", tmp_path / "local"
    few.mkdir()
    for image in IMAGES[:3]:
        shutil.copy(image, few / image.name)
    assert run("explain", "-c", DIGITS_CONFIG, few, "-o", url, *FAST, *parquet).exit_code == 0
    assert run("explain", "-c", DIGITS_CONFIG, few, "-o", local, *FAST, *parquet).exit_code == 0
    assert parts() == sorted(path.name for path in (local / "results.parquet").iterdir()) != many
    table = pq.read_table("/igcli-out/parts/results.parquet", filesystem=fs)
    assert sorted(table.column("relpath").to_pylist()) == sorted(image.name for image in IMAGES[:3])


def test_summary_and_diff_of_a_store_folder_without_a_run_say_so_in_one_line(tmp_path):
    fsspec.filesystem("memory").pipe("/igcli-out/not-a-run/notes.txt", b"hello")
    for args in (["summary", "memory://igcli-out/not-a-run"],
                 ["diff", "memory://igcli-out/not-a-run", "memory://igcli-out/not-a-run", "-o", tmp_path / "d"]):
        result = run(*args)
        assert result.exit_code == 2
        assert result.output.strip().splitlines() == [
            "igcli: error: memory://igcli-out/not-a-run: no results.jsonl there; give the -o of an igcli explain run"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A complete local run of two images, with its maps (diff reads them)."""
    folder = tmp_path_factory.mktemp("small-run") / "run"
    assert run("explain", "-c", DIGITS_CONFIG, *IMAGES[:2], "-o", folder, *FAST).exit_code == 0
    return folder


def test_diff_writes_to_a_store_through_a_local_folder_and_nothing_else(small_run, tmp_path, clean_stores, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    local = run("diff", small_run, small_run, "-o", cwd / "local-diff")
    assert local.exit_code == 0, local.output
    result = run("diff", small_run, small_run, "-o", "memory://w/diff/")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "igcli: 2 matched, 0 in one run only; wrote memory://w/diff/diff.html"
    fs = fsspec.filesystem("memory")
    assert tree(fs, "/w/diff") == local_tree(cwd / "local-diff")
    assert [p.name for p in cwd.iterdir()] == ["local-diff"] and list(clean_stores.iterdir()) == []
    same = run("diff", "memory://w/diff", small_run, "-o", "memory://w/diff")
    assert same.exit_code == 2 and "-o is one of the runs compared" in same.output


@pytest.mark.parametrize("command", ["explain", "diff"])
def test_an_output_folder_like_a_url_missing_a_slash_is_refused_and_nothing_is_written(command, small_run, tmp_path,
                                                                                     monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    runs = ["explain", "-c", DIGITS_CONFIG, IMAGES[0], *FAST] if command == "explain" else \
        ["diff", small_run, small_run]
    result = run(*runs, "-o", "s3:/bkt/x")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["igcli: error: -o s3:/bkt/x: looks like a URL without its '//'; "
                                                  "write s3://bkt/x (or ./s3:/bkt/x for a local folder)"]
    result = run(*runs, "-o", "s3:bkt/x")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["igcli: error: -o s3:bkt/x: looks like a URL without its '//'; "
                                                  "write s3://bkt/x (or ./s3:bkt/x for a local folder)"]
    assert list(cwd.iterdir()) == []


def test_a_local_folder_named_like_a_scheme_is_kept_when_asked_for_plainly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("explain", "-c", DIGITS_CONFIG, IMAGES[0], "-o", "./s3:/x", *FAST).exit_code == 0
    assert (tmp_path / "s3:" / "x" / "results.jsonl").is_file()
    assert output_target("notafsspecscheme:/x") == Path("notafsspecscheme:/x")
    assert output_target(f"file:{tmp_path}/y") == output_target(f"file://{tmp_path}/y") == tmp_path / "y"
    probe = ("import sys; from igcli.results.store import output_target; "
             "output_target('out/x'); output_target('./s3:/x'); print('fsspec' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_report_rebuilds_the_page_of_a_run_in_a_store_and_puts_it_back(small_run, tmp_path, clean_stores, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    fs = fsspec.filesystem("memory")
    for name, data in local_tree(small_run).items():
        if name != "report.html":
            fs.pipe_file(f"/w/a/{name}", data)
    result = run("report", "memory://w/a")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == ["igcli: wrote memory://w/a/report.html"]
    local = tmp_path / "local"
    shutil.copytree(small_run, local)
    (local / "report.html").unlink()
    assert run("report", local).exit_code == 0
    assert fs.cat_file("/w/a/report.html") == (local / "report.html").read_bytes()
    assert sorted(tree(fs, "/w/a")) == sorted(local_tree(local))
    assert list(cwd.iterdir()) == [] and list(clean_stores.iterdir()) == []
    missing = run("report", "memory://w/nothing-here")
    assert missing.exit_code == 2 and missing.output.strip().splitlines() == [
        "igcli: error: memory://w/nothing-here: no results.jsonl there; give the -o of an igcli explain run"]
