"""The documents: generated pages are current, every key and command is documented, links resolve."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = load_generator()


@pytest.mark.parametrize("page", sorted(generate.PAGES))
def test_generated_page_is_current(page):
    committed = (DOCS / page).read_text(encoding="utf-8")
    assert generate.PAGES[page]() == committed, f"docs/{page} is out of date: run python docs/generate.py"


def test_check_mode_names_a_stale_page(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generate, "DOCS", tmp_path)
    (tmp_path / "cli.md").write_text(generate.cli_markdown(), encoding="utf-8")
    (tmp_path / "config.md").write_text("# stale\n", encoding="utf-8")
    assert generate.main(["--check"]) == 1
    assert "docs/config.md: out of date" in capsys.readouterr().err
    assert (tmp_path / "config.md").read_text() == "# stale\n"  # --check writes nothing
    assert generate.main([]) == 0 and generate.main(["--check"]) == 0


def test_every_command_and_subcommand_has_a_section():
    import click

    from igcli.cli.commands import main

    def walk(group, path):
        for name, command in group.commands.items():
            yield path + (name,)
            if isinstance(command, click.Group):
                yield from walk(command, path + (name,))

    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^## (.+)$", page, flags=re.M))
    commands = {" ".join(path) for path in walk(main, ("igcli",))}
    assert commands and commands | {"igcli"} == headings
    assert "--max-errors N" in page and "--score [softmax|logits|sigmoid]" in page  # options, not just names


def test_every_resolved_config_key_has_a_row():
    from igcli.config import Config, resolved

    def dotted(data, prefix=""):
        for key, value in data.items():
            if isinstance(value, dict):
                yield from dotted(value, f"{prefix}{key}.")
            else:
                yield prefix + key

    keys = set(dotted(resolved(Config(model={"path": "model.pt2"}))))
    page = (DOCS / "config.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([\w.]+)` \|", page, flags=re.M))
    assert len(keys) > 40 and keys <= rows, sorted(keys - rows)
    undescribed = [key for key, field in generate._config_fields(Config, ()) if not field.description]
    assert not undescribed, f"add Field(description=...) in igcli/config.py for {undescribed}"


DOCUMENTS = [REPO / "README.md", *sorted(DOCS.glob("*.md")), REPO / "benchmarks" / "RESULTS.md"]
REPO_PATH = re.compile(r"`((?:igcli|docs|benchmarks|tests|configs|sample_data)/[\w./-]*\w)`")
# igcli's own folders, named without the igcli/ prefix; models/, inputs/, outputs/ are the old names.
PACKAGE_PATH = re.compile(r"`((?:attribution|backends|data|results|pipeline|runtime|cli|models|inputs|outputs)/[\w./-]*\w)`")


def referenced_paths(document: Path):
    text = document.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):  # markdown links
        if not re.match(r"[a-z]+:", target):
            yield target, (document.parent / target)
    for target in REPO_PATH.findall(text):  # `igcli/backends/memory.py`, `benchmarks/memory.py`
        if "*" not in target and "<" not in target:
            yield target, REPO / target
    for target in PACKAGE_PATH.findall(text):
        yield target, REPO / "igcli" / target


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_links_and_named_paths_exist(document):
    missing = [name for name, path in referenced_paths(document) if not path.exists()]
    assert not missing, f"{document.relative_to(REPO)} names paths that do not exist: {missing}"


def heading_anchors(document: Path) -> set[str]:
    """GitHub's anchors: a heading lower-cased, punctuation dropped, spaces turned to hyphens."""
    headings = re.findall(r"^#+ (.+)$", document.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_links_to_sections_find_their_heading(document):
    text = document.read_text(encoding="utf-8")
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", text):
        linked = (document.parent / target) if target else document
        if linked.suffix == ".md" and anchor not in heading_anchors(linked):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{document.relative_to(REPO)} links to sections that do not exist: {broken}"


def test_anchors_follow_github():
    assert heading_anchors(DOCS / "method.md") >= {"baselines-baselinekind", "the-adaptive-rule"}


def test_readme_stays_short():
    assert len((REPO / "README.md").read_bytes()) <= 8000
    assert len((REPO / "benchmarks" / "RESULTS.md").read_bytes()) <= 20000



def explained_record(config: Path, document: Path) -> dict:
    import json

    from click.testing import CliRunner

    from igcli.cli.commands import main

    result = CliRunner().invoke(main, ["explain", "-c", str(config), str(document), "--jsonl", "-", "-q",
                                       "--steps", "8"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    return record


def test_readme_names_every_record_field_and_text_md_the_text_ones():
    image = explained_record(REPO / "configs" / "digits.yaml", REPO / "sample_data" / "images" / "three_1442.png")
    text = explained_record(REPO / "configs" / "questions.yaml", REPO / "sample_data" / "texts" / "00_numeric.txt")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    fields = set(image) | set(image["completeness"]) | set(image["target"]) | set(text)
    assert sorted(field for field in fields if f"`{field}`" not in readme) == []
    text_md = (DOCS / "text.md").read_text(encoding="utf-8")
    text_only = set(text) - set(image)
    assert text_only and sorted(field for field in text_only if f"`{field}`" not in text_md) == []
