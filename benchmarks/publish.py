"""What mirroring the outputs to a store costs: the sample job to a local -o against -o memory://
(staging, uploads of every file, checkpoints of results.jsonl and the manifest), in one process so
that the memory store is real and the model load is out of the figure. Runs alternate over
``--repeats``; each time is the median. Record the figure in docs/performance.md.

    PYTHONPATH=. python benchmarks/publish.py [--images 12] [--repeats 9] [--url memory://bench/x]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import fsspec
from click.testing import CliRunner

from igcli.cli.commands import main

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "images"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"


def inputs(folder: Path, count: int) -> Path:
    """``count`` images: the sample's twelve, copied under new names as often as needed."""
    images = sorted(SAMPLE.glob("*.png"))
    folder.mkdir()
    for index in range(count):
        shutil.copy(images[index % len(images)], folder / f"{index:05d}_{images[index % len(images)].name}")
    return folder


def explain(images: Path, out: str) -> float:
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["explain", "-c", str(CONFIG), str(images), "-o", out, "-q", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return time.perf_counter() - started


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--url", default="memory://bench/x")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        images = inputs(Path(work) / "in", args.images)
        local = Path(work) / "out"
        explain(images, str(Path(work) / "warm-up"))
        times: dict[str, list[float]] = {"local": [], "store": []}
        fs, root = fsspec.core.url_to_fs(args.url)
        for _ in range(args.repeats):
            shutil.rmtree(local, ignore_errors=True)
            times["local"].append(explain(images, str(local)))
            if fs.exists(root):
                fs.rm(root, recursive=True)
            times["store"].append(explain(images, args.url))
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    print(f"{args.images} images, {args.repeats} runs each: -o local {medians['local']:.3f} s, "
          f"-o {args.url} {medians['store']:.3f} s (medians); publishing {medians['store'] / medians['local'] - 1:+.1%}")


if __name__ == "__main__":
    main_()
