"""A run into a folder that holds an earlier run replaces it (docs/runs.md): once it completes, the
files the earlier records named and the new ones do not are gone, and so are the mean maps of
classes the new summary lacks; a user's own file, a name that leaves the folder, a link, an
unfinished run and --resume keep what they keep."""
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from igcli.cli.commands import main
from igcli.results.earlier_run import RUN_FILES

from .conftest import DIGITS_CONFIG, SAMPLE_DATA

FAST = ["--device", "cpu", "--steps", "8", "-q"]
ZERO, ONE, SEVEN = (SAMPLE_DATA / "images" / f"{name}.png" for name in ("zero_1437", "one_1449", "seven_1443"))


def explain(out: Path, *inputs: Path, options: tuple[str, ...] = ()):
    return CliRunner().invoke(main, ["explain", "-c", str(DIGITS_CONFIG), *map(str, inputs), "-o", str(out),
                                     *FAST, *options])


def named_files(out: Path) -> set[str]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {name for line in lines for name in json.loads(line).get("outputs", {}).values()}


def own_files(out: Path) -> set[str]:
    return {path.relative_to(out).as_posix() for folder in ("heatmaps", "attributions", "records", "regions")
            for path in (out / folder).rglob("*") if path.is_file()}


def test_a_complete_rerun_leaves_only_the_files_its_records_name(tmp_path):
    pytest.importorskip("skimage")
    out = tmp_path / "out"
    assert explain(out, ZERO, ONE, SEVEN, options=("--set", "regions=xrai")).exit_code == 0
    assert (out / "regions" / "ranks" / "seven_1443.png").is_file() and (out / "summary" / "class_7.png").is_file()
    (out / "heatmaps" / "mine").mkdir()
    (out / "heatmaps" / "mine" / "notes.txt").write_text("the user's own")
    (out / "summary" / "notes.txt").write_text("the user's own")

    result = explain(out, ZERO, ONE)
    assert result.exit_code == 0, result.output
    assert own_files(out) == named_files(out) | {"heatmaps/mine/notes.txt"}
    assert named_files(out) == {f"{kind}/{name}.{ext}" for name in ("zero_1437", "one_1449")
                                for kind, ext in (("heatmaps", "png"), ("attributions", "npy"), ("records", "json"))}
    assert not (out / "regions").exists()
    summary_files = {path.name for path in (out / "summary").iterdir()}
    assert summary_files == {"class_0.npy", "class_0.png", "class_1.npy", "class_1.png", "notes.txt"}


def test_an_unfinished_rerun_keeps_the_earlier_files_and_the_next_complete_run_removes_them(tmp_path):
    out = tmp_path / "out"
    assert explain(out, ZERO, ONE, SEVEN).exit_code == 0
    earlier = own_files(out) | {f"summary/{name}" for name in os.listdir(out / "summary")}
    broken = tmp_path / "in" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"not a png")
    result = explain(out, broken, ZERO, options=("--max-errors", "0"))
    assert result.exit_code == 1 and json.loads((out / "manifest.json").read_text())["state"] == "stopped"
    assert own_files(out) | {f"summary/{name}" for name in os.listdir(out / "summary")} == earlier

    assert explain(out, ZERO).exit_code == 0  # its results.jsonl no longer names seven's files; still removed
    assert own_files(out) == named_files(out) == {"heatmaps/zero_1437.png", "attributions/zero_1437.npy",
                                                  "records/zero_1437.json"}
    assert sorted(os.listdir(out / "summary")) == ["class_0.npy", "class_0.png"]
    assert not [name for name in os.listdir(out) if name.startswith(".igcli")]


@pytest.mark.parametrize("files", [{"results.jsonl": '{"outputs": {"h": "heatmaps/important.png"}}\n'},
                                   {"report.html": "<p>mine</p>", "manifest.json": '{"dataset": "mine"}'}])
def test_a_folder_holding_files_named_as_a_runs_but_no_igcli_manifest_is_not_written_into(tmp_path, files):
    out = tmp_path / "proj"
    (out / "heatmaps").mkdir(parents=True)
    (out / "heatmaps" / "important.png").write_bytes(b"mine")
    for name, text in files.items():
        (out / name).write_text(text)
    result = explain(out, ZERO)
    assert result.exit_code == 2
    assert result.output.strip() == (f"igcli: error: {out}: holds {', '.join(sorted(files, key=RUN_FILES.index))} "
                                     "but no manifest.json of an igcli run, so a run would overwrite them; give "
                                     "another -o, or move those files")
    assert sorted(path.name for path in out.rglob("*")) == sorted([*files, "heatmaps", "important.png"])
    assert all((out / name).read_text() == text for name, text in files.items())
    (out / next(iter(files))).write_text("")  # an empty file holds nothing to lose
    if len(files) == 1:
        assert explain(out, ZERO).exit_code == 0 and (out / "heatmaps" / "important.png").read_bytes() == b"mine"


def test_resume_keeps_the_files_of_the_records_it_reuses(tmp_path):
    out = tmp_path / "out"
    assert explain(out, ZERO, ONE).exit_code == 0
    before = own_files(out)
    result = explain(out, ZERO, ONE, SEVEN, options=("--resume",))
    assert result.exit_code == 0
    assert own_files(out) == named_files(out) == before | {"heatmaps/seven_1443.png", "attributions/seven_1443.npy",
                                                            "records/seven_1443.json"}


def test_names_in_an_earlier_results_file_that_leave_the_folder_or_follow_links_are_not_removed(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    assert explain(out, ZERO).exit_code == 0
    outside.mkdir()
    for name in ("victim.txt", "linked.png"):
        (outside / name).write_text("keep")
    (out / "heatmaps" / "link.png").symlink_to(outside / "linked.png")
    (out / "records" / "far").symlink_to(outside, target_is_directory=True)
    hostile = {"heatmap": "heatmaps/../../outside/victim.txt", "a": str(outside / "victim.txt"),
               "b": "heatmaps/link.png", "c": "records/far/victim.txt", "d": "summary.json", "e": "heatmaps\\x.png"}
    with (out / "results.jsonl").open("a") as results:
        results.write(json.dumps({"input": "x.png", "outputs": hostile}) + "\nnot json\n[1, 2]\n")
    assert explain(out, ZERO).exit_code == 0
    assert (outside / "victim.txt").read_text() == "keep" and (outside / "linked.png").read_text() == "keep"
    assert (out / "heatmaps" / "link.png").is_symlink() and (out / "summary.json").is_file()


def test_a_rerun_of_a_text_job_removes_the_pages_of_documents_gone(tmp_path):
    texts = tmp_path / "texts"
    shutil.copytree(SAMPLE_DATA / "texts", texts)
    config = Path(__file__).resolve().parents[1] / "configs" / "questions.yaml"
    out = tmp_path / "out"

    def run() -> int:
        return CliRunner().invoke(main, ["explain", "-c", str(config), str(texts), "-o", str(out), *FAST]).exit_code

    assert run() == 0
    pages = sorted((out / "html").rglob("*.html"))
    assert len(pages) >= 2
    gone = sorted(texts.rglob("*.txt"))[0]
    gone.unlink()
    assert run() == 0
    assert own_files(out) | {p.relative_to(out).as_posix() for p in (out / "html").rglob("*") if p.is_file()} \
        == named_files(out)
    assert len(list((out / "html").rglob("*.html"))) == len(pages) - 1
