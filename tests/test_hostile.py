"""Hostile folders, names and configs (issue 29): nothing written outside -o, no input lost for
another's name, no hang, no traceback. Each test carries the number of the case it reproduces."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from igcli.cli.commands import main
from igcli.config import OutputSection
from igcli.data.discover import InputRef, PathList, discover_inputs, in_shard
from igcli.data.images import ImagePreprocess, read_image
from igcli.errors import InputError
from igcli.names import name_key
from igcli.results.naming import OutputNames
from igcli.results.records import Sample, TextSample, output_stem
from igcli.results.writer import output_files

from .conftest import DIGITS_CONFIG, REPO, SAMPLE_DATA

IMAGES = sorted((SAMPLE_DATA / "images").glob("*.png"))
QUESTIONS = REPO / "configs" / "questions.yaml"
FAST = ["--steps", "8"]
SLOW = ["--steps", "256", "--batch-size", "16"]  # slow enough per input that a run can be caught midway


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def images_in(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(IMAGES[index % len(IMAGES)], folder / name)
    return folder


def all_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def assert_one_line_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("igcli: error: "), result.stderr
    assert "Traceback" not in result.stderr and len(lines[0]) < 400
    for needle in needles:
        assert needle in lines[0], lines[0]


def start(folder: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "igcli", "explain", "-c", str(DIGITS_CONFIG), str(folder), "-o", str(out),
               "-q", *SLOW, *extra]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(process: subprocess.Popen, ready, what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if ready():
            return
        time.sleep(0.01)
    pytest.fail(f"the run ended or stalled before {what}: {process.communicate()}")


def record_count(out: Path) -> int:
    results = out / "results.jsonl"
    return results.read_bytes().count(b"\n") if results.exists() else 0


@pytest.fixture
def alarm():
    """Fails a test that hangs (a blocking open of a FIFO) instead of hanging the suite."""
    def expire(signum, frame):
        raise TimeoutError("hung")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# 1 ------------------------------------------------------------------------------------------------

def test_29_01_non_utf8_name_loses_nothing_with_resume_and_shard(tmp_path):
    folder = images_in(tmp_path / "in", ["ok.png"])
    bad = os.fsencode(folder) + b"/bad\xff\xfe.png"
    shutil.copy(IMAGES[1], bad)
    out = tmp_path / "out"
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    rows = {row["relpath"]: row for row in records(out)}
    assert set(rows) == {"ok.png", "bad%FF%FE.png"}
    assert rows["bad%FF%FE.png"]["input"].endswith("bad\\xff\\xfe.png")  # printable, and says which bytes
    for row in rows.values():
        assert all((out / path).is_file() for path in row["outputs"].values())
    (out / "results.jsonl").read_bytes().decode("utf-8")  # strict UTF-8
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", out, *FAST, "--resume")
    assert result.exit_code == 0 and manifest(out)["totals"]["reused"] == 2
    seen = []
    for index in range(2):
        shard_out = tmp_path / f"shard{index}"
        result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", shard_out, *FAST, "--shard", f"{index}/2")
        assert result.exit_code == 0, result.output
        seen += [row["relpath"] for row in records(shard_out)]
    assert sorted(seen) == sorted(rows)


# 2 ------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="POSIX special files")
def test_29_02_fifo_and_dev_zero_fail_alone_without_blocking_and_reads_are_capped(tmp_path, alarm):
    folder = images_in(tmp_path / "in", ["ok.png", "small.png"])
    os.mkfifo(folder / "a_fifo.png")
    (folder / "b_zero.png").symlink_to("/dev/zero")
    big = folder / "c_big.png"
    big.write_bytes(IMAGES[0].read_bytes() + b"\0" * 4000)
    out = tmp_path / "out"
    cap = big.stat().st_size - 1
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", out, *FAST, "--set", f"input.max_bytes={cap}")
    assert result.exit_code == 1
    rows = {row["relpath"]: row for row in records(out)}
    assert "not a regular file (a FIFO)" in rows["a_fifo.png"]["error"]["message"]
    assert "not a regular file (a character device)" in rows["b_zero.png"]["error"]["message"]
    assert "over input.max_bytes" in rows["c_big.png"]["error"]["message"]
    assert rows["ok.png"]["error"] is None and rows["small.png"]["error"] is None


# 3 ------------------------------------------------------------------------------------------------

def test_29_03_glob_dotdot_stays_inside_out(tmp_path, monkeypatch):
    (tmp_path / "deep" / "a" / "b").mkdir(parents=True)
    victim = images_in(tmp_path / "victim", ["five.png"])
    before = (victim / "five.png").read_bytes()
    monkeypatch.chdir(tmp_path)
    result = run("explain", "-c", DIGITS_CONFIG, "deep/a/*/../../../victim/*.png", "-o", "out", *FAST,
                 "--set", "output.attributions=npy")
    assert result.exit_code == 0, result.output
    assert [row["relpath"] for row in records(tmp_path / "out")] == ["victim/five.png"]
    assert (victim / "five.png").read_bytes() == before and sorted(os.listdir(victim)) == ["five.png"]
    out = (tmp_path / "out").resolve()
    for path in all_files(out):
        assert path.resolve().is_relative_to(out)
    assert (out / "heatmaps" / "victim" / "five.png").is_file()


# 4 ------------------------------------------------------------------------------------------------

def test_29_04_text_output_names_never_collide(tmp_path):
    for folder, name, text in [("a", "q.txt", "how many legs does a spider have ?"),
                               ("b", "q.txt", "when was the tower built ?"),
                               ("c", "a.txt", "is the sea salty ?"), ("c", "a.TXT", "who wrote the poem ?")]:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_text(text, encoding="utf-8")
    tree = tmp_path / "tree"
    (tree / "q").mkdir(parents=True)
    (tree / "q.jsonl").write_text(json.dumps({"text": "how far is the moon ?"}) + "\n", encoding="utf-8")
    (tree / "q" / "line-00001.txt").write_text("what is the capital of peru ?", encoding="utf-8")
    out = tmp_path / "out"
    files = [tmp_path / "a" / "q.txt", tmp_path / "b" / "q.txt", tmp_path / "c" / "a.txt", tmp_path / "c" / "a.TXT"]
    result = run("explain", "-c", QUESTIONS, *files, tree, "-o", out)
    assert result.exit_code == 0, result.output
    rows = records(out)
    assert len(rows) == 6 and all(row["error"] is None for row in rows)
    pages = [row["outputs"]["html"] for row in rows]
    assert len({name_key(page) for page in pages}) == 6
    for row in rows:  # each page holds its own document
        assert row["words"][1]["word"] in (out / row["outputs"]["html"]).read_text(encoding="utf-8")
    renamed = [row for row in rows if any("is taken by" in w for w in row["warnings"])]
    assert len(renamed) == 3


# 5 ------------------------------------------------------------------------------------------------

def test_29_05_one_run_at_a_time_per_output_folder_and_a_stale_lock_is_taken_over(tmp_path):
    folder = images_in(tmp_path / "in", [f"{n}_{image.name}" for n in range(2) for image in IMAGES])
    out = tmp_path / "out"
    first = start(folder, out)
    wait_until(first, lambda: record_count(out) >= 1, "its first record")
    second = run("explain", "-c", DIGITS_CONFIG, folder, "-o", out, *FAST)
    assert_one_line_error(second, 2, "another igcli run", f"pid {first.pid}")
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert first.returncode == 143
    assert manifest(out)["totals"]["records"] == record_count(out) > 0  # the second run truncated nothing
    assert not (out / ".igcli.lock").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".igcli.lock").write_text(f"{dead.pid}\n")
    result = run("explain", "-c", DIGITS_CONFIG, IMAGES[0], "-o", out, *FAST)
    assert result.exit_code == 0 and len(records(out)) == 1 and not (out / ".igcli.lock").exists()


# 6 ------------------------------------------------------------------------------------------------

def test_29_06_a_rerun_killed_early_leaves_no_old_manifest_or_report(tmp_path):
    folder = images_in(tmp_path / "in", [f"{n}_{image.name}" for n in range(2) for image in IMAGES])
    out = tmp_path / "out"
    assert run("explain", "-c", DIGITS_CONFIG, IMAGES[0], IMAGES[1], "-o", out, *FAST).exit_code == 0
    assert manifest(out)["state"] == "complete" and (out / "report.html").exists()
    process = start(folder, out)
    wait_until(process, lambda: manifest(out)["state"] == "running", "its manifest")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert manifest(out)["state"] == "running" and not (out / "report.html").exists()
    # The killed run's lock is stale: the next run takes it over.
    assert run("explain", "-c", DIGITS_CONFIG, IMAGES[0], "-o", out, *FAST).exit_code == 0
    assert manifest(out)["state"] == "complete" and len(records(out)) == 1


# 7 ------------------------------------------------------------------------------------------------

def test_29_07_a_250_byte_name_gets_its_record_and_later_inputs_go_on(tmp_path):
    long_name = "x" * 246 + ".png"
    assert len(long_name.encode()) == 250
    folder = images_in(tmp_path / "in", [long_name, "y.png", "z.png"])
    out = tmp_path / "out"
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", out, *FAST, "--set", "output.heatmap.style=both",
                 "--set", "target.top_k=2")
    assert result.exit_code == 0, result.output
    rows = records(out)
    assert len(rows) == 6 and {row["input"] for row in rows} == {str(folder / n) for n in (long_name, "y.png", "z.png")}
    for row in rows:
        assert all((out / path).is_file() for path in row["outputs"].values())
    assert max(len(path.name.encode()) for path in all_files(out)) <= 255
    assert not list(out.rglob(".*.tmp"))


# 8 ------------------------------------------------------------------------------------------------

def billion_laughs(key: str, mapping: bool) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, 10):
        if mapping:
            items = ", ".join(f"k{n}: *a{level - 1}" for n in range(9))
            lines.append(f"a{level}: &a{level} {{{items}}}")
        else:
            lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\n{key}: *a9\n"


@pytest.mark.parametrize("case", ["mapping_bomb", "list_bomb_under_target", "huge_file", "long_value", "deep"])
def test_29_08_yaml_bombs_are_one_short_config_error(tmp_path, case):
    path = tmp_path / "bomb.yaml"
    base = f"model: {{factory: {SAMPLE_DATA / 'models' / 'digits_cnn.py'}:build_model}}\n"
    text = {
        "mapping_bomb": base + billion_laughs("extra", True),
        "list_bomb_under_target": base + billion_laughs("target", False),
        "huge_file": base + "# padding\n" * 200_000,
        "long_value": base + "target: [" + ", ".join(["123456789"] * 5000) + "]\n",
        "deep": base + "target: " + "[" * 1500 + "]" * 1500 + "\n",
    }[case]
    path.write_text(text, encoding="utf-8")
    clock = time.monotonic()
    result = run("validate-config", path)
    assert_one_line_error(result, 2, str(path))
    assert time.monotonic() - clock < 20  # each used to take 50-80 s, or never answered
    if case == "long_value":
        assert "'target'" in result.stderr
    flow = "{" + billion_laughs("x", False).replace("\n", ", ").replace("x: *a9, ", "x: *a9") + "}"
    result = run("validate-config", "--set", "target=" + flow)
    assert_one_line_error(result, 2, "--set target")


# 9 ------------------------------------------------------------------------------------------------

def test_29_09_the_pixel_budget_covers_the_resized_size(tmp_path):
    tall = tmp_path / "in" / "tall.png"
    tall.parent.mkdir()
    Image.new("L", (1, 100_000)).save(tall)
    assert tall.stat().st_size < 1000
    with pytest.raises(InputError, match="exceeds Pillow's pixel limit"):
        read_image(InputRef(tall, "tall.png"), ImagePreprocess(mode="RGB", resize=224))
    out = tmp_path / "out"
    result = run("explain", "-c", DIGITS_CONFIG, tall.parent, "-o", out, *FAST, "--set", "input.resize=224")
    assert result.exit_code == 1
    [row] = records(out)
    assert "resizing 1x100000 to 224x22400000 exceeds Pillow's pixel limit" in row["error"]["message"]


# 10 -----------------------------------------------------------------------------------------------

def test_29_10_paths_on_stdin_keep_their_tree(tmp_path, monkeypatch):
    folder = images_in(tmp_path / "data", ["cats/0001.png", "dogs/0001.png", "dogs/more/0002.png"])
    monkeypatch.chdir(tmp_path)
    listing = f"data/cats/0001.png\n{folder / 'dogs' / '0001.png'}\n./data/dogs/more/0002.png\n"
    result = run("explain", "-c", DIGITS_CONFIG, "-", "-o", "out", *FAST, input=listing)
    assert result.exit_code == 0, result.output
    assert [row["relpath"] for row in records(tmp_path / "out")] == ["cats/0001.png", "dogs/0001.png",
                                                                     "dogs/more/0002.png"]
    (tmp_path / "list.txt").write_text(listing)
    result = run("explain", "-c", DIGITS_CONFIG, "--files-from", "list.txt", "--jsonl", "-", "-q", *FAST)
    assert [json.loads(line)["relpath"] for line in result.stdout.splitlines()] == [
        "cats/0001.png", "dogs/0001.png", "dogs/more/0002.png"]


# 11 -----------------------------------------------------------------------------------------------

def test_29_11_an_output_folder_inside_the_input_folder_is_not_ingested(tmp_path):
    folder = images_in(tmp_path / "images", [image.name for image in IMAGES[:3]])
    assert run("explain", "-c", DIGITS_CONFIG, folder, "-o", folder / "out", *FAST).exit_code == 0
    assert run("explain", "-c", DIGITS_CONFIG, folder, "-o", folder / "other", *FAST).exit_code == 0
    # The run's own -o is skipped, and so is any folder an igcli run wrote (its manifest says so).
    for spec in (folder, f"{folder}/**/*.png"):
        result = run("explain", "-c", DIGITS_CONFIG, spec, "-o", folder / "out", *FAST)
        assert result.exit_code == 0 and len(records(folder / "out")) == 3


# 12 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("factory,needle", [
    ("os:system", "TypeError"),
    ("raising.py:build", "RuntimeError: no weights here"),
    ("broken.py:build", "SyntaxError"),
    ("builtins:exit", "it called exit"),
    ("import_raises.py:build", "ValueError: at import"),
])
def test_29_12_a_failing_factory_is_one_line_and_exit_3(tmp_path, factory, needle):
    (tmp_path / "raising.py").write_text("def build():\n    raise RuntimeError('no weights here')\n")
    (tmp_path / "broken.py").write_text("def build(:\n    pass\n")
    (tmp_path / "import_raises.py").write_text("raise ValueError('at import')\ndef build():\n    pass\n")
    config = tmp_path / "cfg.yaml"
    config.write_text(f"model: {{factory: '{factory}'}}\ninput: {{mode: L, resize: [32, 32]}}\n")
    result = run("explain", "-c", config, IMAGES[0], "-o", tmp_path / "out", *FAST)
    assert_one_line_error(result, 3, "model.factory", needle)


def test_29_12_docs_say_a_factory_runs_code_as_a_pickle_does():
    readme = (REPO / "README.md").read_text()
    docs = (REPO / "docs" / "hostile-inputs.md").read_text()
    assert "factory" in readme and "runs code" in readme
    assert "model.factory" in docs and "pickle" in docs


# 13 -----------------------------------------------------------------------------------------------

def test_29_13_resume_hashes_a_module_factory_and_matches_resolved_paths(tmp_path, monkeypatch):
    module = tmp_path / "lib" / "hostile_factory_29.py"
    module.parent.mkdir()
    shutil.copy(SAMPLE_DATA / "models" / "digits_cnn.py", module)
    monkeypatch.syspath_prepend(str(module.parent))
    monkeypatch.delitem(sys.modules, "hostile_factory_29", raising=False)
    folder = images_in(tmp_path / "images", [image.name for image in IMAGES[:3]])
    monkeypatch.chdir(tmp_path)
    sets = ["--set", "model.factory=hostile_factory_29:build_model"]
    assert run("explain", "-c", DIGITS_CONFIG, "images", "-o", "out", *FAST, *sets).exit_code == 0
    result = run("explain", "-c", DIGITS_CONFIG, folder.resolve(), "-o", "out", *FAST, *sets, "--resume")
    assert result.exit_code == 0 and manifest(tmp_path / "out")["totals"]["reused"] == 3  # /abs/images == images
    module.write_text(module.read_text() + "\n# the architecture changed here\n")
    result = run("explain", "-c", DIGITS_CONFIG, "images", "-o", "out", *FAST, *sets, "--resume")
    assert result.exit_code == 0 and manifest(tmp_path / "out")["totals"]["reused"] == 0
    sys.modules.pop("hostile_factory_29", None)


# 14 -----------------------------------------------------------------------------------------------

def test_29_14_two_sigterms_exit_143(tmp_path):
    folder = images_in(tmp_path / "in", [f"{n}_{image.name}" for n in range(3) for image in IMAGES])
    out = tmp_path / "out"
    process = start(folder, out)
    wait_until(process, lambda: record_count(out) >= 1, "its first record")
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr and manifest(out)["state"] == "interrupted"


# 15 -----------------------------------------------------------------------------------------------

def test_29_15_an_empty_shard_exits_0_with_an_empty_complete_output(tmp_path):
    refs = list(discover_inputs([str(SAMPLE_DATA / "images")], (".png",)))
    empty = next(index for index in range(16) if not any(in_shard(ref, index, 16) for ref in refs))
    out = tmp_path / "out"
    result = run("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", out, *FAST, "--shard", f"{empty}/16")
    assert result.exit_code == 0, result.output
    assert (out / "results.jsonl").read_text() == "" and (out / "report.html").is_file()
    assert manifest(out)["state"] == "complete" and manifest(out)["totals"]["inputs"] == 0
    (tmp_path / "empty").mkdir()
    result = run("explain", "-c", DIGITS_CONFIG, tmp_path / "empty", "-o", tmp_path / "o2", "--shard", "0/2")
    assert result.exit_code == 2 and "no inputs found" in result.stderr  # no inputs at all is still an error


# 16 -----------------------------------------------------------------------------------------------

def test_29_16_a_file_reached_twice_is_explained_once_and_a_failure_blocks_no_name(tmp_path):
    folder = images_in(tmp_path / "in", ["a.png", "b.png", "truncated.png"])
    (folder / "truncated.jpg").write_bytes(IMAGES[0].read_bytes()[:200])
    (folder / "link.png").symlink_to(folder / "a.png")
    out = tmp_path / "out"
    result = run("explain", "-c", DIGITS_CONFIG, folder, folder / "a.png", f"{folder}/*.png", "-o", out, *FAST)
    assert result.exit_code == 1
    rows = records(out)
    assert [row["relpath"] for row in rows] == ["a.png", "b.png", "truncated.jpg", "truncated.png"]
    assert rows[2]["error"] is not None and rows[3]["error"] is None and not rows[3]["warnings"]
    assert rows[3]["outputs"]["heatmap"] == "heatmaps/truncated.png"


# 17 -----------------------------------------------------------------------------------------------

def test_29_17_style_both_bare_names_do_not_collide(tmp_path):
    folder = images_in(tmp_path / "in", ["a.png", "a.bare.png"])
    out = tmp_path / "out"
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", out, *FAST, "--set", "output.heatmap.style=both")
    assert result.exit_code == 0, result.output
    written = [path for row in records(out) for path in row["outputs"].values()]
    assert len(written) == len(set(written)) == 2 * 4  # two heatmaps, the array and the record each
    assert len(list((out / "heatmaps").rglob("*.png"))) == 4


# 18 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", [["--fail-fast"], ["--max-errors", "1"]])
def test_29_18_fail_fast_stops_at_the_first_failed_input(tmp_path, flag):
    folder = images_in(tmp_path / "in", [f"{n}.png" for n in range(8)])
    (folder / "1.png").write_bytes(b"not an image")
    (folder / "3.png").write_bytes(b"")
    out = tmp_path / "out"
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", out, *FAST, *flag)
    assert result.exit_code == 1
    stop = 2 if flag == ["--fail-fast"] else 4  # the records end at the failure that crossed the limit
    assert [row["relpath"] for row in records(out)] == [f"{n}.png" for n in range(stop)]
    assert manifest(out)["state"] == "stopped" and manifest(out)["totals"]["inputs"] == stop


# 19 -----------------------------------------------------------------------------------------------

def test_29_19_show_escapes_control_characters_in_names(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "evil\x1b]0;pwned\x07\x1b[2J.txt").write_text("how many legs does a spider have ?")
    result = run("explain", "-c", QUESTIONS, folder, "-o", tmp_path / "out", "--show", "-q")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J.txt" in result.stdout


# 20 -----------------------------------------------------------------------------------------------

def test_29_20_report_tolerates_records_with_missing_keys(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lines = [{"input": "a.png", "error": None},  # no completeness, target, numbers, outputs
             {"input": "b.png", "error": None, "target": {"index": 3}, "completeness": {"converged": True},
              "f_input": "high", "steps": None},
             {"input": "c.png", "error": "a plain string"}, {"error": {"type": "InputError"}}]
    (out / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run("report", out)
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert page.count("<tr data-status=") == 4 and "a plain string" in page


# Name mapping, for any set of inputs -------------------------------------------------------------

PARTS = st.one_of(
    st.sampled_from(["..", ".", "", "a", "A", "a.png", "A.PNG", "a.bare.png", "q", "line-00001.png", "x.png",
                     "\udcff\udcfe.png", "b\\c.png", "\x1b[2J.png", "é.png", "e\u0301.png", "ß.png", "SS.png"]),
    st.text(alphabet=st.sampled_from("aAbB.-_~%\udcff\udc80 é"), min_size=1, max_size=8),
    st.integers(200, 260).map(lambda n: "n" * (n - 4) + ".png"),
)
PATHS = st.lists(st.lists(PARTS, min_size=1, max_size=4).map("/".join), min_size=1, max_size=25)


def claimed_outputs(relpaths: list[str], options: OutputSection, ranked: bool, text: bool) -> list[list[str]]:
    names = OutputNames(options, ranked)
    outputs = []
    for number, relpath in enumerate(relpaths):
        sample = TextSample(source=f"src{number}", relpath=relpath, text="", ids=None, mask=None, tokens=[],
                            offsets=[], word_ids=[], special=[]) if text else \
            Sample(source=f"src{number}", relpath=relpath, x=None, pixels=None)
        names.claim(sample)
        stem = output_stem(sample.relpath)
        ranks = [".top1", ".top2", ".top10"] if ranked else [""]
        outputs.append([file for rank in ranks for file in output_files(stem + rank, text, options)])
    return outputs


def assert_distinct_and_inside(outputs: list[list[str]]) -> None:
    files = [file for group in outputs for file in group]
    keys = [name_key(file) for file in files]
    assert len(set(keys)) == len(keys), "two inputs write one file"
    folders = {key.rsplit("/", depth)[0] for key in keys for depth in range(1, key.count("/") + 1)}
    assert not folders & set(keys), "a file where another input needs a folder"
    for file in files:
        file.encode("utf-8")  # writable by any UTF-8 file system API
        parts = file.split("/")
        assert not os.path.isabs(file) and all(part not in ("", ".", "..") for part in parts)
        assert os.path.normpath(os.path.join("/out", file)).startswith("/out/")
        assert all(len(part.encode()) <= 255 - 30 for part in parts)  # room for the temporary name


@settings(max_examples=150, deadline=None)
@given(paths=PATHS, ranked=st.booleans(), style=st.sampled_from(["overlay", "both", "none"]), text=st.booleans())
def test_29_names_any_inputs_get_distinct_outputs_inside_out(paths, ranked, style, text):
    from igcli.names import safe_relpath

    options = OutputSection(heatmap={"style": style}, attributions="npy")
    assert_distinct_and_inside(claimed_outputs([safe_relpath(path) for path in paths], options, ranked, text))


@settings(max_examples=60, deadline=None)
@given(paths=PATHS, absolute=st.lists(st.booleans(), min_size=25, max_size=25))
def test_29_names_stdin_style_lists_absolute_and_relative_stay_inside_out(tmp_path_factory, paths, absolute):
    root = tmp_path_factory.getbasetemp() / "cwd29" / "d1" / "d2" / "d3" / "d4"  # four `..` stay in cwd29
    root.mkdir(parents=True, exist_ok=True)
    listed = PathList(str(root / path) if flag else path for path, flag in zip(paths, absolute))
    old = os.getcwd()
    os.chdir(root)
    try:
        refs = list(discover_inputs([listed], (".png",)))
    finally:
        os.chdir(old)
    assert_distinct_and_inside(claimed_outputs([ref.relpath for ref in refs], OutputSection(), False, False))


def test_29_names_config_ranks_match_the_writer(tmp_path):
    """The claimed names are the ones the writer writes: a run's record outputs are all claimed."""
    folder = images_in(tmp_path / "in", ["a.png", "A.png", "a.top1.png"])
    out = tmp_path / "out"
    assert run("explain", "-c", DIGITS_CONFIG, folder, "-o", out, *FAST, "--set", "target.top_k=2",
               "--set", "output.heatmap.style=both").exit_code == 0
    written = [name_key(path) for row in records(out) for path in row["outputs"].values()]
    assert len(written) == len(set(written)) == 3 * 2 * 4


# Found by a newcomer trying the merged tool --------------------------------------------------------

def test_bidi_overrides_and_c1_controls_never_reach_output_names(tmp_path):
    folder = images_in(tmp_path / "in", ["evil\u202egnp.png", "a\u0085b.png", "plain.png"])
    out = tmp_path / "out"
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    names = [path.name for path in all_files(out)]
    assert not any(set(name) & {"\u202e", "\x85"} for name in names), names
    assert {"evil%u202egnp.png", "a%85b.png", "plain.png"} <= {Path(r["outputs"]["heatmap"]).name for r in records(out)}
    # U+0085 in a name stays inside its record's line, so --resume finds every record.
    assert len((out / "results.jsonl").read_text(encoding="utf-8").splitlines()) == 3
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", out, "--resume", *FAST)
    assert result.exit_code == 0, result.output
    assert manifest(out)["totals"]["reused"] == 3


def test_an_output_path_that_is_a_file_is_refused_in_one_line_and_left_alone(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    result = run("explain", "-c", DIGITS_CONFIG, images_in(tmp_path / "in", ["a.png"]), "-o", target, *FAST)
    assert_one_line_error(result, 2, "not a folder")
    assert target.read_text() == "keep me"
