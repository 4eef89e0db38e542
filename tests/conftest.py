"""Shared fixtures: the committed sample data, copied where tests may change it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"
DIGITS_CONFIG = REPO / "configs" / "digits.yaml"


@pytest.fixture
def sample_tree(tmp_path: Path) -> Path:
    """A private copy of sample_data/images and configs, so tests can add bad files."""
    images = tmp_path / "images"
    shutil.copytree(SAMPLE_DATA / "images", images)
    return images
