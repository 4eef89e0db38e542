"""Shared fixtures: the committed sample data, copied where tests may change it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"
DIGITS_CONFIG = REPO / "configs" / "digits.yaml"
DEVICE_AUTO = "cuda" if torch.cuda.is_available() else "cpu"  # what device: auto picks here

# Gradient graphs of max-pooling models hold aten.max_pool2d_with_indices_backward, which torch
# 2.11's ONNX exporter cannot convert (seen on the lent GPU machine); torch 2.13 converts it.
needs_maxpool_export = pytest.mark.skipif(
    tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2]) < (2, 13),
    reason="torch < 2.13 cannot export max-pool backward to ONNX")


def invoke(*args: object):
    """igcli's CLI on ``args`` in this process, exceptions left to fail the test."""
    from click.testing import CliRunner

    from igcli.cli.commands import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result) -> str:
    """The one line a refused command writes to stderr (the test fails on more)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def sample_tree(tmp_path: Path) -> Path:
    """A private copy of sample_data/images and configs, so tests can add bad files."""
    images = tmp_path / "images"
    shutil.copytree(SAMPLE_DATA / "images", images)
    return images
