"""Peak RSS of `igcli explain` at its defaults, and of a captum loop on the same model and images.

Three models: the sample digit CNN (sample_data, 1x32x32), a MobileNetV3-small-like text-direction
classifier at 3x48x192 and ResNet-50 at 3x224x224 (benchmarks/memory_models.py, seeded random
weights). Each measurement is a fresh child process; its peak resident set size comes from the
kernel (wait4's ru_maxrss). igcli runs with every config default (batch_size auto, the adaptive
rule) except the model and input keys; captum runs IntegratedGradients at its own defaults (50
Gauss-Legendre steps, every step of one image in one batch), one image per call, as a user's loop
would, on the first CAPTUM_IMAGES images (its peak is one image's). igcli gets enough images that
its chunks in flight fill their batches (each chunk holds up to ~57 inputs on small models), as a
long run would.

    python benchmarks/peak_memory.py [--images N] [--cases digits cls48x192 resnet50] [--set key=value ...]
                                     [--onnx MODEL.onnx --onnx-size 48,192]

``--onnx`` adds a plain ONNX classifier (RGB, mean/std 0.5) at ``--onnx-size``, such as PaddleOCR's
text-direction classifier ch_ppocr_mobile_v2.0_cls_infer.onnx from the rapidocr-onnxruntime wheel.
``--set`` passes config overrides to igcli (``--set batch_size=256``: the former default).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "benchmarks" / "memory_models.py"
DIGITS = REPO / "sample_data" / "models"

CAPTUM_IMAGES = 8
IMAGES = {"digits": 128, "cls48x192": 128, "resnet50": 8}  # igcli's images per model unless --images
# name: (factory, weights or None, mode, [H, W], mean, std)
CASES = {
    "digits": (f"{DIGITS / 'digits_cnn.py'}:build_model", DIGITS / "digits_cnn_state.pt", "L", (32, 32), 0.5, 0.5),
    "cls48x192": (f"{MODELS}:direction_classifier", None, "RGB", (48, 192), 0.5, 0.5),
    "resnet50": (f"{MODELS}:resnet50", None, "RGB", (224, 224), 0.45, 0.225),
}


def make_images(folder: Path, case: str, count: int) -> None:
    """``count`` seeded images: the sample digits for the digit CNN, smooth random colour fields else."""
    _, _, mode, (height, width), _, _ = CASES[case]
    if case == "digits":
        sources = sorted((REPO / "sample_data" / "images").glob("*.png"))
        for index in range(count):
            Image.open(sources[index % len(sources)]).save(folder / f"{index:03d}.png")
        return
    generator = np.random.default_rng(0)
    for index in range(count):
        coarse = generator.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse, mode="RGB").resize((width, height), Image.Resampling.BILINEAR)
        image.convert(mode).save(folder / f"{index:03d}.png")


def write_config(path: Path, case: str) -> None:
    factory, weights, mode, (height, width), mean, std = CASES[case]
    channels = 1 if mode == "L" else 3
    factory_line = f"  factory: {factory}\n" if factory else ""
    weights_line = f"  path: {weights}\n" if weights else ""
    path.write_text(f"model:\n{factory_line}{weights_line}input:\n  mode: {mode}\n  resize: [{height}, {width}]\n"
                    f"  mean: {[mean] * channels}\n  std: {[std] * channels}\n")


def child_peak(command: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of ``command`` run as a child process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... exited with {os.waitstatus_to_exitcode(status)}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start  # Linux reports KiB


def captum_run(case: str, folder: Path) -> None:
    """The captum loop (run in the child): IG per image at captum's defaults, softmax of the predicted class."""
    import torch
    from captum.attr import IntegratedGradients

    sys.path.insert(0, str(REPO))
    from igcli.backends.loading import load_module

    factory, weights, mode, (height, width), mean, std = CASES[case]
    if factory is None:
        from igcli.backends.onnx.format import read_onnx
        from igcli.backends.onnx.source import onnx_to_torch

        model = onnx_to_torch(read_onnx(weights), weights).eval()
    else:
        model = load_module(weights, factory).eval()
    ig = IntegratedGradients(lambda x: torch.softmax(model(x), dim=1))
    for path in sorted(folder.glob("*.png")):
        image = Image.open(path).convert(mode).resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        x = (torch.from_numpy(pixels)[None] - mean) / std
        target = int(model(x).argmax())
        ig.attribute(x, torch.full_like(x, -mean / std), target=target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, help="images per model (default: %s)" % IMAGES)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--set", dest="sets", action="append", default=[], help="igcli config overrides")
    parser.add_argument("--onnx", type=Path, help="a plain ONNX image classifier to measure too")
    parser.add_argument("--onnx-size", default="48,192", help="its input's H,W")
    parser.add_argument("--captum-child", nargs=3, metavar=("CASE", "FOLDER", "ONNX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = list(args.cases)
    onnx = args.onnx or (Path(args.captum_child[2]) if args.captum_child and args.captum_child[2] != "-" else None)
    if onnx is not None:
        height, width = (int(side) for side in args.onnx_size.split(","))
        CASES[onnx.name] = (None, onnx.resolve(), "RGB", (height, width), 0.5, 0.5)
        IMAGES[onnx.name] = 128
        cases.append(onnx.name)
    if args.captum_child:
        captum_run(args.captum_child[0], Path(args.captum_child[1]))
        return
    print(f"# {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"captum on {CAPTUM_IMAGES} images, igcli overrides: {' '.join(args.sets) or 'none'}")
    print("| model | input | images | igcli peak RSS (MiB) | igcli s | captum peak RSS (MiB) | captum s |")
    print("|---|---|---|---|---|---|---|")
    for case in cases:
        with tempfile.TemporaryDirectory() as scratch:
            folder, config, few = Path(scratch) / "images", Path(scratch) / "config.yaml", Path(scratch) / "few"
            folder.mkdir()
            few.mkdir()
            count = args.images or IMAGES[case]
            make_images(folder, case, count)
            make_images(few, case, min(count, CAPTUM_IMAGES))
            write_config(config, case)
            igcli_rss, igcli_s = child_peak([sys.executable, "-m", "igcli", "explain", "-c", str(config), str(folder),
                                             "-o", str(Path(scratch) / "out"), "-q",
                                             *(arg for text in args.sets for arg in ("--set", text))])
            captum_rss, captum_s = child_peak([sys.executable, __file__, "--captum-child", case, str(few),
                                              str(args.onnx.resolve()) if args.onnx else "-", "--onnx-size", args.onnx_size])
        _, _, mode, (height, width), _, _ = CASES[case]
        print(f"| {case} | {1 if mode == 'L' else 3}x{height}x{width} | {count} | {igcli_rss:.0f} | {igcli_s:.1f} | "
              f"{captum_rss:.0f} | {captum_s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
