"""Overhead: igcli's gradient evaluations per second against a bare forward + input-gradient loop.

The bare loop is the floor any IG tool pays: the same backend (the sample CNN, torch, CPU), the
configured points per batch (``batch_size``) on torch's threads, the same total number of path
points as igcli used, on inputs decoded before the clock starts, and nothing else — no baselines, no
quadrature, no records, no files. igcli is timed twice on the same images: the engine alone
(job.explain_samples on decoded samples, its chunks in flight as pipeline/run.py puts them), and end to end
(explain_inputs: discovery, decoding, engine, heatmap PNG, .npy, JSON records, manifest), the model
loaded before the clock starts in both. Evaluations are counted from igcli's records, so the
forwards igcli spends on F(x) and F(x') count as overhead.

Where igcli puts two chunks in flight (a CPU of several cores: each on half the threads, with half
the batch; igcli/pipeline/overlap.py), a second bare loop runs the same way: as many loops at once, each on
its share of the threads and the points, "bare, in flight". Against the first, the engine's ratio is
what a user gains over a plain loop; against the second, it is the engine's own cost alone.

    python benchmarks/overhead.py [--images 240] [--repeats 3] [--set key=value ...]
        [--variant "chunk_inputs=192" --variant ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from comparison import add_malloc_option, apply_malloc_option
from end_to_end import CONFIG, make_inputs
from variants import overrides

from igcli.config import load_config
from igcli.data.discover import discover_inputs
from igcli.pipeline.chunks import chunks
from igcli.pipeline.image_job import ImageJob
from igcli.pipeline.overlap import ordered_map, threads_shared
from igcli.pipeline.run import explain_inputs


def bare_loop(job: ImageJob, samples: list, evaluations: int, batch: int) -> float:
    """Seconds for ``evaluations`` forward + input-gradient points, ``batch`` at a time."""
    x = torch.stack([s.x for s in samples])
    classes = job.backend.scores(x[:1]).shape[1]
    alphas = torch.rand(evaluations, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for first in range(0, evaluations, batch):
        count = min(batch, evaluations - first)
        rows = torch.arange(first, first + count) % len(x)
        points = alphas[first:first + count].view(-1, 1, 1, 1) * x[rows]  # the time does not depend on the path
        weights = torch.zeros(count, classes)
        weights[:, 0] = 1
        job.backend.scores_and_grads(points, weights)
    return time.perf_counter() - start


def bare_in_flight(job: ImageJob, samples: list, evaluations: int) -> float:
    """Seconds for ``evaluations`` points as job.in_flight bare loops at once, each with the job's
    batch and its share of the threads, as igcli runs its chunks."""
    shares = [evaluations // job.in_flight + (k < evaluations % job.in_flight) for k in range(job.in_flight)]
    with threads_shared(job.in_flight, job.device):
        start = time.perf_counter()
        list(ordered_map(lambda share: bare_loop(job, samples, share, job.batch.points), shares, job.in_flight))
        return time.perf_counter() - start


def engine_only(job: ImageJob, samples: list) -> tuple[float, int]:
    start = time.perf_counter()
    evaluations = 0
    with threads_shared(job.in_flight, job.device):
        cut = chunks(samples, job.chunk_size, job.in_flight)
        for _, groups in ordered_map(job.explain_samples, cut, job.in_flight):
            evaluations += sum(record.gradient_evals for group in groups for record in group)
    return time.perf_counter() - start, evaluations


def end_to_end(config, folder: Path, out: Path, job: ImageJob) -> tuple[float, int]:
    # The job is built once (model loaded) outside the clock.
    start = time.perf_counter()
    explain_inputs(config, [str(folder)], out, job=job)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return seconds, sum(row["gradient_evals"] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="igcli config overrides")
    parser.add_argument("--variant", action="append", default=[],
                        help="config overrides timed in turn with the others in each repeat, e.g. 'chunk_inputs=192'")
    add_malloc_option(parser)
    args = parser.parse_args()
    malloc = apply_malloc_option(args)
    variants = args.variant or [""]
    configs = {variant: load_config(CONFIG, [(text, "--set") for text in ["device=cpu", "output.attributions=npy"]
                                             + args.sets + overrides(variant)]) for variant in variants}
    jobs = {variant: ImageJob(config) for variant, config in configs.items()}
    names = ("bare", "bare, in flight", "engine", "end to end")
    runs = [(variant, name) for variant in variants for name in names]
    rates: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    ratios: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    in_flight_ratios: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    faults: dict[tuple[str, str], list[int]] = {run: [] for run in runs}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "images"
        folder.mkdir()
        make_inputs(folder, args.images)
        samples = list(jobs[variants[0]].read(discover_inputs([str(folder)], (".png",))))
        for variant, job in jobs.items():
            # Warm-up: every batch shape the runs will meet (oneDNN builds kernels per shape, once).
            engine_only(job, samples)
            batch = configs[variant].batch_size
            bare_loop(job, samples, 4 * batch, batch)
            bare_in_flight(job, samples, 4 * batch)
        for repeat in range(args.repeats):
            # Variants in turn, the order reversed every other repeat: this machine drifts.
            for variant in variants if repeat % 2 == 0 else variants[::-1]:
                job, batch = jobs[variant], configs[variant].batch_size
                with page_faults(faults[variant, "engine"]):
                    seconds, evaluations = engine_only(job, samples)
                rates[variant, "engine"].append(evaluations / seconds)
                with page_faults(faults[variant, "bare"]):
                    rates[variant, "bare"].append(evaluations / bare_loop(job, samples, evaluations, batch))
                with page_faults(faults[variant, "bare, in flight"]):
                    rates[variant, "bare, in flight"].append(evaluations / bare_in_flight(job, samples, evaluations))
                with page_faults(faults[variant, "end to end"]):
                    seconds, evaluations = end_to_end(configs[variant], folder, Path(scratch) / f"out{repeat}{variant}",
                                                      job)
                rates[variant, "end to end"].append(evaluations / seconds)
                # Its files' writeback would otherwise run through the next timed loops.
                os.sync()
                # This machine's speed drifts by tens of percent over a minute: each run is
                # compared with the bare loop of the same variant and repeat, seconds apart.
                for name in names:
                    ratios[variant, name].append(rates[variant, name][-1] / rates[variant, "bare"][-1])
                    in_flight_ratios[variant, name].append(rates[variant, name][-1]
                                                           / rates[variant, "bare, in flight"][-1])
    print(f"# {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} "
          f"images, batch {configs[variants[0]].batch_size}, chunks in flight {jobs[variants[0]].in_flight} "
          f"(each: batch {jobs[variants[0]].batch.points}, {jobs[variants[0]].chunk_size}+ inputs), "
          f"{configs[variants[0]].method.value}, "
          f"{evaluations / args.images:.1f} evals/image, {malloc}, overrides: {' '.join(args.sets) or 'none'}; "
          f"medians of {args.repeats}")
    print("| run | gradient evals/s | vs bare loop (median of each repeat's ratio) | each repeat's ratio "
          "| vs bare, in flight (median) | minor page faults per run (median) |")
    print("|---|---|---|---|---|---|")
    for variant, name in runs:
        label = f"{name} ({variant})" if variant else name
        each = ratios[variant, name]
        print(f"| {label} | {statistics.median(rates[variant, name]):,.0f} | {statistics.median(each):.2f}x "
              f"| {' '.join(f'{r:.2f}' for r in each)} | {statistics.median(in_flight_ratios[variant, name]):.2f}x "
              f"| {statistics.median(faults[variant, name]):,.0f} |")


@contextmanager
def page_faults(counts: list[int]) -> Iterator[None]:
    """Appends the minor page faults the block took, over all threads: a page freed to the system
    and written again costs one (igcli/runtime/heap.py)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    yield
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)


if __name__ == "__main__":
    main()
