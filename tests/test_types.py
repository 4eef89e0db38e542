"""Static checks in the test run: mypy on the core layers (attribution/, backends/) and ruff on the repo, with the settings in pyproject.toml."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_attribution_and_backends_type_check(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e .[test]")
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                             "--cache-dir", str(tmp_path / "mypy-cache"), "igcli/attribution", "igcli/backends"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint_passes():
    pytest.importorskip("ruff", reason="ruff is in the test extra: pip install -e .[test]")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "igcli", "tests", "benchmarks", "docs"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
