"""Scaling out on this machine: the sample job's images/s in one process, with --workers N, on a
local Ray (--ray auto, where Ray is installed), and captum's loop in the same run, for reference.

Each igcli run is a fresh ``igcli explain`` process, so its time includes starting Python, loading
the model and starting the workers (or Ray): what a user waits for. Runs alternate over
``--repeats`` and each rate is the median. Scaling efficiency is rate(N workers) / (N x rate(1)),
on the cores this machine has: workers split them, so on 2 cores it measures the overhead of
processes, not a gain from more hardware. Record the figure in docs/performance.md.

    PYTHONPATH=. python benchmarks/scaling.py [--images 120] [--repeats 3] [--workers 2] [--no-ray] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from captum.attr import IntegratedGradients

from igcli.backends.loading import load_module
from igcli.config import load_config
from igcli.data.discover import discover_inputs
from igcli.pipeline.image_job import ImageJob
from igcli.results.heatmap import render_overlay, signed_map

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "digits.yaml"
CAPTUM = "captum loop (GL, 50 steps), in this process"


def make_inputs(folder: Path, count: int) -> None:
    sources = sorted((REPO / "sample_data" / "images").glob("*.png"))
    for index in range(count):
        source = sources[index % len(sources)]
        shutil.copy(source, folder / f"{index:05d}_{source.name}")


def captum_seconds(module: torch.nn.Module, job: ImageJob, folder: Path, out: Path) -> float:
    """What a user would write: decode as igcli does, captum's IG at its defaults on the softmax for
    the predicted class against the black baseline, and a heatmap PNG and JSON record per image."""
    ig = IntegratedGradients(lambda x: torch.softmax(module(x), dim=1))
    out.mkdir(parents=True)
    start = time.perf_counter()
    for ref in discover_inputs([str(folder)], (".png",)):
        sample = next(job.read([ref]))
        x = sample.x[None]
        with torch.no_grad():
            target = int(torch.softmax(module(x), 1).argmax())
        attributions = ig.attribute(x, baselines=torch.full_like(x, -1.0), target=target)[0].detach()
        render_overlay(sample.pixels.numpy(), signed_map(attributions.numpy(), "all", 99), 0.6).save(
            out / f"{ref.path.stem}.png")
        (out / f"{ref.path.stem}.json").write_text(json.dumps({"input": str(ref.path), "target": target}))
    return time.perf_counter() - start


def igcli_seconds(folder: Path, out: Path, sets: list[str], *extra: str) -> float:
    command = [sys.executable, "-m", "igcli", "explain", "-c", str(CONFIG), str(folder), "-o", str(out), "-q",
               "--device", "cpu", *[part for text in sets for part in ("--set", text)], *extra]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray run even where Ray is installed")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="igcli config overrides")
    args = parser.parse_args()
    runs = {"igcli, 1 process": (), f"igcli --workers {args.workers}": ("--workers", str(args.workers))}
    if not args.no_ray and importlib.util.find_spec("ray") is not None:
        runs[f"igcli --ray auto --workers {args.workers} (local Ray, started by the run)"] = \
            ("--ray", "auto", "--workers", str(args.workers))
    job = ImageJob(load_config(CONFIG, [("device=cpu", "--set")]))
    times: dict[str, list[float]] = {name: [] for name in [CAPTUM, *runs]}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "images").mkdir()
        make_inputs(scratch / "images", args.images)
        captum = functools.partial(captum_seconds, load_module(job.config.model.path, job.config.model.factory),
                                   job, scratch / "images")
        for repeat in range(args.repeats):
            times[CAPTUM].append(captum(scratch / f"captum-{repeat}"))
            for index, (name, extra) in enumerate(runs.items()):
                times[name].append(igcli_seconds(scratch / "images", scratch / f"out-{index}-{repeat}", args.sets,
                                                 *extra))
    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.images} images, "
          f"medians of {args.repeats} alternating runs; igcli times include process start and model load")
    rates = {name: args.images / statistics.median(seconds) for name, seconds in times.items()}
    one = rates["igcli, 1 process"]
    print("| run | images/s | vs 1 process |")
    print("|---|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / one:.2f}x |")
    print(f"scaling efficiency of {args.workers} workers: "
          f"{rates[f'igcli --workers {args.workers}'] / (args.workers * one):.2f}")


if __name__ == "__main__":
    main()
