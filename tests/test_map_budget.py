"""The adaptive rule's stored maps at their worst (every path at max_steps) stay within the chunk
sizing's memory budget, on a real MobileNetV3-like classifier at 3x48x192."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from igcli.attribution import adaptive
from igcli.cli.commands import main
from igcli.pipeline import map_budget
from igcli.pipeline.overlap import chunks_in_flight
from igcli.runtime import buffers

from .conftest import REPO

SHAPE = (3, 48, 192)
MAX_STEPS = 16


def test_worst_case_maps_of_the_chunks_in_flight_fit_the_budget(tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    generator = np.random.default_rng(0)
    for index in range(6):
        coarse = generator.integers(0, 256, (7, 25, 3), dtype=np.uint8)
        Image.fromarray(coarse, mode="RGB").resize((192, 48), Image.Resampling.BILINEAR).save(images / f"{index}.png")
    per_input = map_budget.worst_case_map_bytes(1, 1, MAX_STEPS + 1, SHAPE)
    assert per_input == 17 * 3 * 48 * 192 * 4
    budget = 4 * per_input
    monkeypatch.setattr(map_budget, "MAP_BUDGET_BYTES", budget)

    stored, borrows, chunks = [], [], []
    attributions, borrow, init = adaptive._Refinement.attributions, buffers.MapBuffers.borrow, adaptive._Refinement.__init__
    monkeypatch.setattr(adaptive._Refinement, "attributions",
                        lambda self: stored.append(self.nodes * self.density[0].nbytes) or attributions(self))
    monkeypatch.setattr(buffers.MapBuffers, "borrow", lambda self, *a: borrows.append(1) or borrow(self, *a))
    monkeypatch.setattr(adaptive._Refinement, "__init__", lambda self, *a, **k: chunks.append(1) or init(self, *a, **k))

    # A tolerance out of reach: every path runs to max_steps, the worst case the budget is sized for.
    config = tmp_path / "cls.yaml"
    config.write_text(f"model: {{factory: '{REPO / 'benchmarks' / 'memory_models.py'}:direction_classifier'}}\n"
                      "input: {mode: RGB, resize: [48, 192], mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}\n"
                      f"tolerance: 1.0e-12\nmap_tolerance: 1.0e-12\nmax_steps: {MAX_STEPS}\ndevice: cpu\n"
                      "batch_size: 64\n")
    result = CliRunner().invoke(main, ["explain", "-c", str(config), str(images), "-o", str(tmp_path / "out"), "-q"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {r["stopped_by"] for r in records} == {"max_steps"}

    # The job sized chunks for the worst case: without the budget, a 64-point batch makes chunks of
    # ceil(4 * 64 / in_flight / 5) inputs or more, whose maps at max_steps are 13+ inputs' worth.
    assert len(stored) == len(chunks) >= 2
    assert max(stored) >= per_input and max(stored) % per_input == 0  # whole paths at max_steps
    in_flight = chunks_in_flight(torch.device("cpu"), "torch")
    assert in_flight * max(stored) <= budget
    assert len(borrows) == len(chunks)  # one buffer a chunk, never grown (no copy of the maps held)


@pytest.mark.parametrize("in_flight, expected", [(1, 4), (2, 2), (3, 1), (8, 1)])
def test_inputs_within_the_map_budget(in_flight, expected):
    per_input = map_budget.worst_case_map_bytes(1, 2, 513, SHAPE)
    assert map_budget.inputs_within_map_budget(2, 513, SHAPE, in_flight, 4.5 * per_input) == expected
