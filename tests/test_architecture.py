"""The layer rules, read from the source: every import (module-level or inside a function) counts."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "igcli"
# attribution/ is IG itself: tensors, the Backend protocol and the shared errors, nothing above.
ATTRIBUTION_MAY_IMPORT = ("igcli.attribution", "igcli.backends.base", "igcli.errors")
ATTRIBUTION_THIRD_PARTY = {"torch", "numpy"}
LAYER_LINES = 420  # "no module over ~400 lines", for the layers with this rule


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports, anywhere in it; ``from pkg import name`` counts as pkg.name
    where that is a module, else as pkg."""
    this = module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = this.split(".") if path.name == "__init__.py" else this.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found


def test_attribution_imports_only_tensors_the_backend_protocol_and_errors():
    known = modules()
    stdlib = set(sys.stdlib_module_names)
    wrong = []
    for name, path in known.items():
        if not name.startswith("igcli.attribution"):
            continue
        for imported in imports(path, known):
            top = imported.split(".")[0]
            if top == "igcli":
                if not any(imported == allowed or imported.startswith(allowed + ".")
                           for allowed in ATTRIBUTION_MAY_IMPORT):
                    wrong.append(f"{name} imports {imported}")
            elif top not in stdlib and top not in ATTRIBUTION_THIRD_PARTY and top != "__future__":
                wrong.append(f"{name} imports {imported}")
    assert not wrong, "; ".join(wrong)


@pytest.mark.parametrize("layer", ["igcli.attribution", "igcli.backends"])
def test_lower_layers_import_nothing_from_the_pipeline_or_the_cli(layer):
    known = modules()
    above = ("igcli.pipeline", "igcli.cli", "igcli.config")
    wrong = [f"{name} imports {imported}" for name, path in known.items() if name.startswith(layer)
             for imported in imports(path, known) if imported.startswith(above)]
    assert not wrong, "; ".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None: depth-first search for a back edge."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_igcli_modules():
    known = modules()
    graph = {name: {imported for imported in imports(path, known) if imported in known and imported != name}
             for name, path in known.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("layer", ["attribution", "backends"])
def test_modules_of_the_core_layers_fit_in_about_400_lines(layer):
    long = {str(path.relative_to(PACKAGE)): lines for path in sorted((PACKAGE / layer).rglob("*.py"))
            if (lines := len(path.read_text().splitlines())) > LAYER_LINES}
    assert not long, long
