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


def print_table(unit: str, element: str, count: int, captum_rows: list[tuple[str, float, Sequence[float]]],
                rows: list[tuple[str, float, float, Sequence[float], int]]) -> None:
    """``captum_rows``: (name, median seconds, accuracy triple) of the reference captum loop and the
    tuned one; ``rows``: igcli's (name, median seconds, evaluations per input, accuracy triple,
    failed inputs); ``unit``: what an input is (image), ``element``: what a map is made of."""
    print(f"| run | {unit}s/s | vs captum | vs tuned captum | gradient evals/{unit} | completeness error "
          f"| map error, max {element} | map error, L2 |")
    print("|---|---|---|---|---|---|---|---|")
    (_, reference, _), (_, tuned, _) = captum_rows
    for name, seconds, accuracy in captum_rows:
        print(f"| {name} | {count / seconds:.1f} | {reference / seconds:.2f}x | {tuned / seconds:.2f}x | 50 | "
              + " | ".join(f"{v:.2e}" for v in accuracy) + " |")
    for name, seconds, evals, accuracy, failed in rows:
        print(f"| igcli explain ({name}) | {count / seconds:.1f} | {reference / seconds:.2f}x | {tuned / seconds:.2f}x "
              f"| {evals:.1f} | " + " | ".join(f"{v:.2e}" for v in accuracy)
              + f" |{'' if failed == 0 else f' ({failed} failed)'}")
