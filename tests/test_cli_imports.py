"""The command line reads and checks configs without loading torch: ``igcli --help`` and
``igcli validate-config`` answer in a fraction of a second."""
from __future__ import annotations

import subprocess
import sys

import yaml

from .conftest import DIGITS_CONFIG, REPO

# Runs the command line in this interpreter, then says whether torch (or numpy) got imported.
PROBE = """
import sys
from igcli.cli.commands import main
try:
    main(sys.argv[1:], prog_name="igcli")
except SystemExit as stop:
    code = stop.code
print("modules:", "torch" in sys.modules, "numpy" in sys.modules, code, file=sys.stderr)
"""


def _probe(*args: str) -> tuple[str, str]:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    line = [text for text in result.stderr.splitlines() if text.startswith("modules:")]
    assert line, result.stderr
    return result.stdout, line[-1]


def test_importing_the_command_line_does_not_import_torch():
    code = "import sys, igcli.cli.commands, igcli.cli.launch, igcli.config; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_help_and_validate_config_do_not_import_torch():
    help_text, modules = _probe("--help")
    assert "explain" in help_text and modules == "modules: False False 0"
    resolved, modules = _probe("validate-config", str(DIGITS_CONFIG), "--set", "method=gausslegendre")
    assert modules == "modules: False False 0"
    config = yaml.safe_load(resolved)
    assert config["method"] == "gausslegendre" and config["model"]["score"] == "softmax"
    assert config["map_tolerance"] == 0.07 and config["baseline"]["kind"] == "black"


def test_a_bad_config_is_reported_without_torch(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  path: m.pt\nmethod: simpson\n")
    _, modules = _probe("validate-config", str(bad))
    assert modules == "modules: False False 2"


def test_the_enums_keep_their_old_homes():
    """Code that named them where they were defined still finds the same objects."""
    from igcli.attribution import adaptive, baselines, kinds, quadrature
    from igcli.backends import base
    from igcli.backends import kinds as backend_kinds

    assert quadrature.Rule is kinds.Rule and baselines.BaselineKind is kinds.BaselineKind
    assert baselines.TEXT_BASELINES is kinds.TEXT_BASELINES
    assert adaptive.DEFAULT_MAP_TOLERANCE == kinds.DEFAULT_MAP_TOLERANCE
    assert base.ScoreKind is backend_kinds.ScoreKind and base.Precision is backend_kinds.Precision
    import torch

    assert [p.torch_dtype for p in base.Precision] == [torch.float32, torch.bfloat16, torch.float16]


def test_data_imports_nothing_from_the_stages_after_it():
    """Data flows one way: cli -> pipeline -> data -> attribution -> results. Readers hand Samples on;
    they import nothing of results/, pipeline/ or cli/."""
    import ast

    later = ("igcli.results", "igcli.pipeline", "igcli.cli")
    found = []
    for path in sorted((REPO / "igcli" / "data").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {name}" for name in names if name.startswith(later)]
    assert found == []
