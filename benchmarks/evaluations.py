"""Goal 2 on many distinct images: gradient evaluations per image, and accuracy, against captum.

end_to_end.py measures accuracy on the twelve bundled sample scans. Here the inputs are the
held-out part of the sample model's data set (scikit-learn's digits, the images
sample_data/train_digits.py never trained on), written as PNG files the way the samples are
stored, so that the adaptive rule meets a few hundred different paths. Per image: captum's
IntegratedGradients with its defaults (Gauss-Legendre, 50 steps) on the softmax of the
predicted class against the black baseline, igcli explain as configured and with each
``--variant``, and a 1,024-step Gauss-Legendre reference; errors as in end_to_end.py. Needs
scikit-learn (the test and train extras).

    python benchmarks/evaluations.py [--images 360] [--training] [--variant "tolerance=0.02" --variant ...]
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch
from comparison import mean_errors, run_with_maps
from end_to_end import CONFIG, REPO, captum_loop, reference_maps
from variants import overrides, threads

from igcli.backends.loading import load_module
from igcli.config import load_config
from igcli.pipeline.image_job import ImageJob


def write_held_out(folder: Path, count: int) -> None:
    """The first ``count`` held-out digits as PNG files, stored as train_digits.py stores the samples."""
    write_digits(folder, count, training=False)


def write_digits(folder: Path, count: int, training: bool) -> None:
    """The first ``count`` held-out digits (or, ``training``, digits the model was trained on) as
    PNG files, stored as train_digits.py stores the samples."""
    spec = importlib.util.spec_from_file_location("train_digits", REPO / "sample_data" / "train_digits.py")
    train_digits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_digits)
    images, _, y, split = train_digits.load_dataset()
    part, name = (range(split), "training") if training else (range(split, len(y)), "held-out")
    if count > len(part):
        raise SystemExit(f"--images: the data set holds {len(part)} {name} digits")
    for index in part[:count]:
        images[index].save(folder / f"{index:04d}_{train_digits.LABELS[int(y[index])]}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=360)
    parser.add_argument("--training", action="store_true",
                        help="digits the model was trained on instead of held-out ones: a second set, which "
                             "the configured tolerances were not chosen on (the model is surer of them)")
    parser.add_argument("--variant", action="append", default=[],
                        help="igcli config overrides to measure besides the config as it is, as --set takes "
                             "them (repeatable)")
    args = parser.parse_args()

    def configured(variant: str):
        texts = ["device=cpu", "output.attributions=npy", "output.heatmap.style=none"] + overrides(variant)
        return load_config(CONFIG, [(text, "--set") for text in texts])

    job = ImageJob(configured(""))
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "images").mkdir()
        write_digits(scratch / "images", args.images, args.training)
        reference = reference_maps(job, scratch / "images")
        module = load_module(job.config.model.path, job.config.model.factory)
        _, captum_maps = captum_loop(module, job, scratch / "images", scratch / "captum")

        def errors(maps: dict[str, np.ndarray]) -> tuple[float, ...]:
            return mean_errors((a, *reference[name]) for name, a in maps.items())

        print(f"# {platform.machine()}, torch {torch.__version__}, {args.images} "
              f"{'training' if args.training else 'held-out'} digits")
        print("| run | gradient evals/image | vs captum's 50 | completeness error | map error, max pixel "
              "| map error, L2 |")
        print("|---|---|---|---|---|---|")
        print("| captum (GL, 50 steps) | 50 | 1.00x | " + " | ".join(f"{v:.2e}" for v in errors(captum_maps)) + " |")
        for index, variant in enumerate(["", *args.variant]):
            maps, evals, _ = run_with_maps(configured(variant), scratch / "images", scratch / f"igcli{index}",
                                           threads(variant))
            print(f"| igcli ({variant or 'as configured'}) | {evals:.1f} | {evals / 50:.2f}x | "
                  + " | ".join(f"{v:.2e}" for v in errors(maps)) + " |", flush=True)


if __name__ == "__main__":
    main()
