"""The parts of the end-to-end benchmarks that do not depend on the input kind: the alternating
timed runs, the untimed run that saves the maps, the accuracy measures, and the table of rates
and accuracies against the captum loops."""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from variants import applied, threads

from igcli.pipeline.run import explain_inputs
from igcli.runtime.heap import MALLOC_TUNABLES, set_up_malloc


def add_malloc_option(parser) -> None:
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is; by default it is set as `igcli explain` sets it "
                             "(igcli/runtime/heap.py: the script starts itself again once), for everything in this "
                             "process, captum's loops too")


def apply_malloc_option(args) -> str:
    """Set malloc as ``--default-malloc`` asks; returns the setting, for the table's header."""
    if args.default_malloc:
        return "glibc's adaptive malloc"
    # Starts this benchmark again under igcli's tunables, as `igcli explain` does; returns where the
    # environment set malloc already (or after the restart).
    changed = set_up_malloc("restart")
    if os.environ.get("GLIBC_TUNABLES", "").endswith(MALLOC_TUNABLES):
        return "igcli's malloc tunables"
    return "igcli's fixed malloc thresholds" if changed else "malloc as the environment set it"


CaptumLoop = Callable[[Path], tuple[float, dict[str, np.ndarray]]]  # output folder -> (seconds, maps)


def time_alternately(repeats: int, captum: dict[str, CaptumLoop], configs: dict, inputs: Path,
                     scratch: Path) -> tuple[dict[str, list[float]], dict[str, dict[str, np.ndarray]]]:
    """Each captum loop, then igcli with each variant's config (``configs``: variant -> Config), in
    turn, ``repeats`` times: a shared machine drifts between back-to-back runs by more than the
    effects measured. Returns every run's seconds by name, and each captum loop's last maps."""
    times: dict[str, list[float]] = {name: [] for name in [*captum, *configs]}
    maps: dict[str, dict[str, np.ndarray]] = {}
    for repeat in range(repeats):
        for index, (name, loop) in enumerate(captum.items()):
            seconds, maps[name] = loop(scratch / f"captum{index}-{repeat}")
            times[name].append(seconds)
        for index, (variant, config) in enumerate(configs.items()):
            with applied(threads(variant)) as options:
                start = time.perf_counter()
                explain_inputs(config, [str(inputs)], scratch / f"igcli{index}-{repeat}", options=options)
                times[variant].append(time.perf_counter() - start)
    return times, maps


def input_errors(a: np.ndarray, ref: np.ndarray, delta: float) -> tuple[float, float, float]:
    """One input's errors: the completeness error relative to |F(x) - F(x')| (``delta``),
    max|A - A_ref| / max|A_ref|, and the relative L2 error ||A - A_ref|| / ||A_ref||."""
    return (float(abs(a.sum() - delta) / abs(delta)), float(np.abs(a - ref).max() / np.abs(ref).max()),
            float(np.linalg.norm(a - ref) / np.linalg.norm(ref)))


def mean_errors(compared: Iterable[tuple[np.ndarray, np.ndarray, float]]) -> tuple[float, float, float]:
    """Over (attributions, reference attributions, F(x) - F(x')) per input, the means of
    ``input_errors``."""
    errors = [input_errors(a, ref, delta) for a, ref, delta in compared]
    return tuple(float(np.mean(column)) for column in zip(*errors))


def run_with_maps(config, inputs: Path, out: Path, settings: dict[str, int] | None = None
                  ) -> tuple[dict[str, np.ndarray], float, object]:
    """One more, untimed run that also saves the .npy attributions: maps by input file name, mean
    gradient evaluations per input, and the run's summary. ``settings``: the variant's
    (variants.threads), which decide its chunks and batches too."""
    with applied(settings or {}) as options:
        summary = explain_inputs(config, [str(inputs)], out, options=options)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    maps = {Path(r["input"]).name: np.load(out / r["outputs"]["attributions"]) for r in rows}
    return maps, statistics.mean(r["gradient_evals"] for r in rows), summary


def print_table(unit: str, element: str, count: int, times: dict[str, list[float]],
                captum_maps: dict[str, dict[str, np.ndarray]], results: dict[str, tuple],
                accuracy: Callable[[dict[str, np.ndarray]], Sequence[float]], as_given: str) -> None:
    """The table of rates (medians of ``times``) and accuracies: the reference captum loop and the
    tuned one (``captum_maps``, in that order), then igcli per variant (``results``: variant ->
    run_with_maps' answer). ``accuracy``: maps -> the three errors; ``as_given``: the name of
    the variant '' (the config as given); ``unit``: what an input is (image), ``element``: what a map
    is made of."""
    print(f"| run | {unit}s/s | vs captum | vs tuned captum | gradient evals/{unit} | completeness error "
          f"| map error, max {element} | map error, L2 |")
    print("|---|---|---|---|---|---|---|---|")
    reference, tuned = (statistics.median(times[loop]) for loop in captum_maps)
    for loop, maps in captum_maps.items():
        seconds = statistics.median(times[loop])
        print(f"| {loop} | {count / seconds:.1f} | {reference / seconds:.2f}x | {tuned / seconds:.2f}x | 50 | "
              + " | ".join(f"{v:.2e}" for v in accuracy(maps)) + " |")
    for variant, (maps, evals, summary) in results.items():
        seconds = statistics.median(times[variant])
        print(f"| igcli explain ({variant or as_given}) | {count / seconds:.1f} | {reference / seconds:.2f}x "
              f"| {tuned / seconds:.2f}x | {evals:.1f} | " + " | ".join(f"{v:.2e}" for v in accuracy(maps))
              + f" |{'' if summary.failed == 0 else f' ({summary.failed} failed)'}")
