"""Evaluations per second against the batch size: which ``batch_size`` to configure.

Times the backend's forward + input-gradient (what one path point costs igcli) on the sample CNN,
loaded as configs/digits.yaml loads it and with malloc set as ``igcli explain`` sets it, at each
``--sizes`` entry, repeated ``--repeats`` times in a shuffled order (this machine drifts by
more than the differences measured, and a fixed order would bias the sizes timed first or last),
and prints each size's median and best rate. Bigger is not always faster on a CPU: once a batch's
activations leave the caches, every layer waits on memory.

    python benchmarks/batch_size.py [--sizes 32 64 96 128 192 256 512] [--repeats 25] [--default-malloc]
"""
from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import torch
from comparison import add_malloc_option, apply_malloc_option
from end_to_end import CONFIG

from igcli.config import load_config
from igcli.pipeline.image_job import ImageJob

POINTS_PER_TIMING = 1024  # each timing runs about this many points, whatever the batch size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96, 128, 192, 256, 512])
    parser.add_argument("--repeats", type=int, default=25)
    add_malloc_option(parser)
    args = parser.parse_args()
    # glibc's default malloc maps and unmaps a batch's larger activations on every call: with it,
    # batch 128 ran 25% below 112 here, where igcli's setting has them equal (RESULTS.md).
    malloc = apply_malloc_option(args)
    # The backend `igcli explain` builds for the sample config (the factory + state_dict, with
    # igcli's graph rewrites), not the exported .pt2, which runs without them.
    backend = ImageJob(load_config(CONFIG, [("device=cpu", "--set")])).backend
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(max(args.sizes), 1, 32, 32, generator=generator)
    weights = torch.zeros(max(args.sizes), 10)
    weights[:, 3] = 1
    rates: dict[int, list[float]] = {size: [] for size in args.sizes}
    for size in args.sizes:  # warm-up: oneDNN builds its kernels for each shape once
        backend.scores_and_grads(x[:size], weights[:size])
    order = random.Random(0)
    for _ in range(args.repeats):
        sizes = list(args.sizes)
        order.shuffle(sizes)
        for size in sizes:
            calls = max(1, POINTS_PER_TIMING // size)
            start = time.perf_counter()
            for _ in range(calls):
                backend.scores_and_grads(x[:size], weights[:size])
            rates[size].append(calls * size / (time.perf_counter() - start))
    print(f"# {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, sample CNN "
          f"1x32x32, forward + input gradient, {args.repeats} shuffled repeats, {malloc}")
    print("| batch size | evaluations/s, median | best |")
    print("|---|---|---|")
    for size in args.sizes:
        print(f"| {size} | {statistics.median(rates[size]):,.0f} | {max(rates[size]):,.0f} |")


if __name__ == "__main__":
    main()
