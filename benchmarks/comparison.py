"""The parts of the end-to-end benchmarks that do not depend on the input kind: the untimed run
that saves the maps, and the table of rates and accuracies against the captum loop."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Sequence

import numpy as np

from igcli.run import explain_inputs


def run_with_maps(config, inputs: Path, out: Path) -> tuple[dict[str, np.ndarray], float, object]:
    """One more, untimed run that also saves the .npy attributions: maps by input file name, mean
    gradient evaluations per input, and the run's summary."""
    summary = explain_inputs(config, [str(inputs)], out)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    maps = {Path(r["input"]).name: np.load(out / r["outputs"]["attributions"]) for r in rows}
    return maps, statistics.mean(r["gradient_evals"] for r in rows), summary


def print_table(unit: str, element: str, count: int, captum_seconds: float, captum_accuracy: Sequence[float],
                rows: list[tuple[str, float, float, Sequence[float], int]]) -> None:
    """``rows``: (name, median seconds, evaluations per input, accuracy triple, failed inputs);
    ``unit``: what an input is (image), ``element``: what a map is made of (pixel)."""
    print(f"| run | {unit}s/s | vs captum | gradient evals/{unit} | completeness error "
          f"| map error, max {element} | map error, L2 |")
    print("|---|---|---|---|---|---|---|")
    print(f"| captum loop (GL, 50 steps) | {count / captum_seconds:.1f} | 1.00x | 50 | "
          + " | ".join(f"{v:.2e}" for v in captum_accuracy) + " |")
    for name, seconds, evals, accuracy, failed in rows:
        print(f"| igcli explain ({name}) | {count / seconds:.1f} | {captum_seconds / seconds:.2f}x | {evals:.1f} | "
              + " | ".join(f"{v:.2e}" for v in accuracy) + f" |{'' if failed == 0 else f' ({failed} failed)'}")
