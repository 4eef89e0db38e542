"""CPU, end to end (decode -> attributions -> heatmap PNG + JSON): igcli explain vs a captum loop.

The captum loop is what a user would write: for each file, decode and preprocess it exactly as igcli
does, call captum's IntegratedGradients with its defaults (gausslegendre, 50 steps) on the softmax
of the sample model for the predicted class against the same black baseline, and write the same
heatmap PNG and JSON record. Both run in this process on the same files. Accuracy is measured on
every image against a 1,024-step Gauss-Legendre reference: completeness error relative to
|F(x) - F(x')|, and map error as max|A - A_ref| / max|A_ref| and as ||A - A_ref|| / ||A_ref|| (L2);
each is the mean over images.

Both runs are repeated alternately (``--repeats``) and each rate is the median, because a shared
machine drifts between back-to-back runs by more than the effects measured here. The timed igcli
runs write what the captum loop writes -- a heatmap PNG and a JSON record per image -- plus
results.jsonl, the manifest and report.html; one more, untimed run also saves the .npy
attributions that the accuracy columns are computed from.

    python benchmarks/end_to_end.py [--images 120] [--repeats 5] [--set key=value ...]
        [--variant "batch_size=128 writers=2" --variant ...]
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from captum.attr import IntegratedGradients
from comparison import add_malloc_option, apply_malloc_option, mean_errors, print_table, run_with_maps, time_alternately
from variants import overrides, threads

from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule
from igcli.backends.loading import load_module
from igcli.config import load_config
from igcli.data.discover import discover_inputs
from igcli.pipeline.image_job import ImageJob
from igcli.results.heatmap import render_overlay, signed_map

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "digits.yaml"
CAPTUM = "captum loop (GL, 50 steps)"
CAPTUM_TUNED = "captum loop on igcli's copy of the model (parameters frozen, channels-last)"


def make_inputs(folder: Path, count: int) -> None:
    sources = sorted((REPO / "sample_data" / "images").glob("*.png"))
    for index in range(count):
        shutil.copy(sources[index % len(sources)], folder / f"{index:05d}_{sources[index % len(sources)].name}")


def captum_loop(module: torch.nn.Module, job: ImageJob, folder: Path, out: Path) -> tuple[float, dict[str, np.ndarray]]:
    ig = IntegratedGradients(lambda x: torch.softmax(module(x), dim=1))
    maps: dict[str, np.ndarray] = {}
    out.mkdir(parents=True)
    start = time.perf_counter()
    for ref in discover_inputs([str(folder)], (".png",)):
        sample = job.read([ref]).__next__()
        x = sample.x[None]
        baseline = torch.full_like(x, -1.0)
        with torch.no_grad():
            target = int(torch.softmax(module(x), 1).argmax())
        attributions = ig.attribute(x, baselines=baseline, target=target)[0].detach()
        values = signed_map(attributions.numpy(), "all", 99)
        render_overlay(sample.pixels.numpy(), values, 0.6).save(out / f"{ref.path.stem}.png")
        (out / f"{ref.path.stem}.json").write_text(json.dumps({"input": str(ref.path), "target": target,
                                                              "attribution_sum": float(attributions.sum())}))
        maps[ref.path.name] = attributions.numpy()
    return time.perf_counter() - start, maps


def reference_maps(job: ImageJob, folder: Path) -> dict[str, tuple[np.ndarray, float]]:
    """1,024-step Gauss-Legendre attributions and F(x) - F(x') for every distinct image."""
    result = {}
    for ref in discover_inputs([str(folder)], (".png",)):
        sample = next(job.read([ref]))
        (e,) = attribute(job.backend, sample.x[None], torch.full_like(sample.x, -1.0)[None, None],
                       TargetSpec("predicted"), Quadrature(Rule.gausslegendre, 1024), batch_size=256)
        result[ref.path.name] = (e.attributions.numpy(), e.f_input - e.f_baseline)
    return result


def accuracy(maps: dict[str, np.ndarray], reference: dict[str, tuple[np.ndarray, float]]) -> tuple[float, ...]:
    """mean_errors, each copy of an image against its sample's reference."""
    return mean_errors((a, *reference[name.split("_", 1)[1]]) for name, a in maps.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="igcli config overrides")
    parser.add_argument("--variant", action="append", default=[],
                        help="igcli settings to time, each against the same captum runs: config overrides and "
                             "writers=N, read_ahead=N, in_flight=N (repeatable; default: the config as it is)")
    add_malloc_option(parser)
    args = parser.parse_args()
    malloc = apply_malloc_option(args)
    variants = args.variant or [""]

    def configured(variant: str, attributions: str):
        texts = ["device=cpu", f"output.attributions={attributions}"] + args.sets + overrides(variant)
        return load_config(CONFIG, [(text, "--set") for text in texts])

    configs = {variant: configured(variant, "none") for variant in variants}
    job = ImageJob(configs[variants[0]])
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "images").mkdir()
        make_inputs(scratch / "images", args.images)
        reference = reference_maps(job, REPO / "sample_data" / "images")
        # The reference loads the model as a user would (trainable parameters, default memory
        # format); the tuned loop gets igcli's copy of it (parameters frozen, channels-last).
        captum_modules = {CAPTUM: load_module(job.config.model.path, job.config.model.factory),
                          CAPTUM_TUNED: job.backend.module}
        loops = {name: functools.partial(captum_loop, module, job, scratch / "images")
                 for name, module in captum_modules.items()}
        times, captum_maps = time_alternately(args.repeats, loops, configs, scratch / "images", scratch)
        results = {variant: run_with_maps(configured(variant, "npy"), scratch / "images", scratch / f"maps{index}",
                                            threads(variant))
                   for index, variant in enumerate(variants)}
    print(f"# {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.images} images, medians of {args.repeats} alternating runs, {malloc}, igcli overrides: "
          f"{' '.join(args.sets) or 'none'} (igcli's time includes loading the model)")
    as_given = configured("", "none")
    print_table("image", "pixel", args.images, times, captum_maps, results, lambda maps: accuracy(maps, reference),
                f"{as_given.method.value}, tol {as_given.tolerance}")


if __name__ == "__main__":
    main()
