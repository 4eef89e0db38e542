"""batch_size auto for text jobs: measured on a document of max_length tokens, like images."""
from __future__ import annotations

from pathlib import Path

import pytest

from igcli.backends import memory
from igcli.config import load_config
from igcli.pipeline.text_job import TextJob

from .test_text import QUESTIONS_CONFIG

WIDTH = 16384
WIDE_TEXT_MODEL = f"""
import torch
from torch import nn


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50000, 8)
        self.wide, self.head = nn.Linear(8, {WIDTH}), nn.Linear({WIDTH}, 4)

    def forward(self, ids):
        return self.head(torch.tanh(self.wide(self.embed(ids))).mean(1))


def build():
    return Wide()
"""


def job(tmp_path: Path, *sets: str) -> TextJob:
    (tmp_path / "wide.py").write_text(WIDE_TEXT_MODEL)
    base = ["model.path=null", f"model.factory={tmp_path / 'wide.py'}:build", "device=cpu", *sets]
    return TextJob(load_config(QUESTIONS_CONFIG, [(text, "--set") for text in base]))


@pytest.mark.parametrize("length", [32, 64])
def test_text_auto_batch_fits_the_longest_documents_activations(tmp_path, monkeypatch, length):
    monkeypatch.setattr(memory, "available_bytes", lambda: 64.0 * 2**30)
    built = job(tmp_path, f"input.max_length={length}")
    # Each point saves at least tanh's output, [length, WIDTH] float32, at the longest document.
    floor = length * WIDTH * 4 * memory.PEAK_OVER_SAVED
    points = built.batch.points * built.in_flight
    assert 8 <= points < memory.MAX_POINTS
    assert points * floor <= memory.BUDGET_BYTES
    assert (points + 8) * floor > memory.BUDGET_BYTES / 2  # not far below it either: measured, not a constant


def test_text_auto_batch_shrinks_with_max_length_and_an_integer_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 64.0 * 2**30)
    short, long = job(tmp_path, "input.max_length=32"), job(tmp_path, "input.max_length=128")
    assert long.batch.points < short.batch.points
    explicit = job(tmp_path, "batch_size=40")
    assert explicit.batch.points == 40 // explicit.in_flight
    # The sample model's activations are small: the cap.
    sample = TextJob(load_config(QUESTIONS_CONFIG, [("device=cpu", "--set")]))
    assert sample.batch.points * sample.in_flight == memory.MAX_POINTS
