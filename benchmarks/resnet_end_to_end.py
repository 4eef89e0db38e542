"""End to end on a ResNet-shaped model at 224x224: igcli explain vs a captum loop, on GPU or CPU.

The model is benchmarks/resnet.py's ResNet-50 (or -18), random weights calibrated on the images
(batch-norm statistics, logit spread); the images are seeded synthetic 320x240 JPEG photos (shapes
and gradients), resized to 224 on the short side and centre-cropped to 224, ImageNet-normalised.

The captum loop is what a user would write: per file, decode as igcli does, move to the device,
captum's IntegratedGradients with its defaults (gausslegendre, 50 steps) on the softmax for the
predicted class against the black baseline, then the heatmap PNG and a JSON record. igcli runs
`explain` on the same folder (it also writes .npy attributions, results.jsonl, the manifest and
report.html), once per ``--variant`` (config overrides). Accuracy, as in end_to_end.py, is the mean over images
against a 1,024-step Gauss-Legendre reference computed in float32 with TF32 off: completeness error
relative to |F(x) - F(x')| (with float32 end points), max-pixel and L2 map errors. A bare loop of
forward + input-gradient at igcli's batch size gives the engine's ceiling (evaluations/s).
Runs alternate (``--repeats``) and rates are medians.

    python benchmarks/resnet_end_to_end.py --device cuda --depth 50 --images 256 --repeats 3 \\
        --variant "tolerance=0.1" --variant "tolerance=0.1 model.precision=bfloat16"
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from captum.attr import IntegratedGradients
from comparison import add_malloc_option, apply_malloc_option
from end_to_end import REPO, accuracy
from PIL import Image, ImageDraw
from resnet import calibrate
from variants import applied, overrides, threads

from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule
from igcli.backends.loading import load_module
from igcli.config import load_config
from igcli.data.discover import discover_inputs
from igcli.pipeline.image_job import ImageJob
from igcli.pipeline.run import explain_inputs
from igcli.results.heatmap import render_overlay, signed_map

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make_images(folder: Path, distinct: int, count: int) -> list[Path]:
    """``distinct`` seeded photos-like JPEGs, copied round-robin to ``count`` files in ``folder``."""
    rng = np.random.default_rng(0)
    originals = []
    for index in range(distinct):
        y, x = np.mgrid[0:240, 0:320] / 240.0
        base = np.stack([np.sin(rng.uniform(1, 6) * x + rng.uniform(0, 6)) * np.cos(rng.uniform(1, 6) * y)
                         for _ in range(3)], axis=2)
        image = Image.fromarray(((base * 0.5 + 0.5) * 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = rng.integers(0, 280), rng.integers(0, 200)
            box = [x0, y0, x0 + rng.integers(20, 120), y0 + rng.integers(20, 120)]
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        originals.append(image)
    paths = []
    for index in range(count):
        path = folder / f"{index:05d}_{index % distinct:03d}.jpg"
        originals[index % distinct].save(path, quality=90)
        paths.append(path)
    return paths


def write_config(scratch: Path, depth: int, device: str, size: int, images: list[Path]) -> Path:
    """The igcli config, with the calibrated state_dict it names."""
    factory = f"{REPO / 'benchmarks' / 'resnet.py'}:resnet{depth}"
    config_path = scratch / "resnet.yaml"
    config_path.write_text(json.dumps({
        "model": {"factory": factory, "score": "softmax"},
        "input": {"mode": "RGB", "resize": size, "crop": size, "mean": MEAN, "std": STD},
        "baseline": {"kind": "black"}, "target": "predicted", "device": device,
        "output": {"attributions": "npy"}}))
    job = ImageJob(load_config(config_path))
    model = load_module(None, factory)
    batch = torch.stack([next(job.read(discover_inputs([str(p)], (".jpg",)))).x for p in images[:64]])
    torch.save(calibrate(model, batch).state_dict(), scratch / "resnet.pt")
    spec = json.loads(config_path.read_text())
    spec["model"]["path"] = str(scratch / "resnet.pt")
    config_path.write_text(json.dumps(spec))
    return config_path


def captum_loop(module: torch.nn.Module, job: ImageJob, folder: Path, out: Path) -> tuple[float, dict]:
    device = job.device
    ig = IntegratedGradients(lambda x: torch.softmax(module(x), dim=1))
    maps = {}
    out.mkdir(parents=True)
    start = time.perf_counter()
    for ref in discover_inputs([str(folder)], (".jpg",)):
        sample = next(job.read([ref]))
        x = sample.x[None].to(device)
        baseline = job_baseline(job, sample).to(device)
        with torch.no_grad():
            target = int(torch.softmax(module(x), 1).argmax())
        attributions = ig.attribute(x, baselines=baseline, target=target)[0].detach().cpu().numpy()
        render_overlay(sample.pixels.numpy(), signed_map(attributions, "all", 99), 0.6).save(out / f"{ref.path.stem}.png")
        (out / f"{ref.path.stem}.json").write_text(json.dumps({"input": str(ref.path), "target": target,
                                                              "attribution_sum": float(attributions.sum())}))
        maps[ref.path.name] = attributions
    return time.perf_counter() - start, maps


def job_baseline(job: ImageJob, sample) -> torch.Tensor:
    from igcli.attribution.baselines import make_baselines

    return make_baselines(job.baseline, sample.pixels, job.preprocess.normalization, sample.relpath)


def reference_maps(job: ImageJob, originals: list[Path], steps: int) -> dict[str, tuple[np.ndarray, float]]:
    """``steps``-step (1,024) Gauss-Legendre attributions in float32 (TF32 off) and F(x) - F(x') per image."""
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        result = {}
        for path in originals:
            sample = next(job.read(discover_inputs([str(path)], (".jpg",))))
            (e,) = attribute(job.backend, sample.x[None], job_baseline(job, sample)[None], TargetSpec("predicted"),
                           Quadrature(Rule.gausslegendre, steps), batch_size=128)
            result[path.name.split("_", 1)[1]] = (e.attributions.numpy(), e.f_input - e.f_baseline)
        return result
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def bare_rate(job: ImageJob, batch: int, size: int, repeats: int = 10) -> float:
    """Evaluations/s of forward + input-gradient alone, on igcli's backend, ``batch`` points a call."""
    backend = job.backend
    x = torch.randn(batch, 3, size, size, device=backend.device)
    weights = torch.zeros(batch, 1000, device=backend.device)
    weights[:, 0] = 1
    backend.scores_and_grads(x, weights)
    times = []
    for _ in range(repeats):
        _sync(backend.device)
        start = time.perf_counter()
        backend.scores_and_grads(x, weights)
        _sync(backend.device)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def igcli_run(config, folder: Path, out: Path, settings: dict[str, int]) -> tuple[float, dict, float]:
    """One `explain` run; ``settings`` may fix the writer and read-ahead threads and the chunks in
    flight (keys writers, read_ahead, in_flight), and turn on cuDNN's autotuner (cudnn_benchmark=1)."""
    with applied(settings) as options:
        start = time.perf_counter()
        summary = explain_inputs(config, [str(folder)], out, options=options)
        seconds = time.perf_counter() - start
    if summary.failed:
        raise SystemExit(f"igcli failed on {summary.failed} inputs")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    maps = {Path(r["input"]).name: np.load(out / r["outputs"]["attributions"]) for r in rows
            if "attributions" in r["outputs"]}
    return seconds, maps, statistics.mean(r["gradient_evals"] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--depth", type=int, choices=(18, 50), default=50)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--distinct", type=int, default=32, help="different images among them (accuracy runs on these)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224, help="model input side (smaller only for smoke runs)")
    parser.add_argument("--reference-steps", type=int, default=1024)
    parser.add_argument("--variant", action="append", default=[],
                        help="igcli config overrides for one igcli run, space-separated (repeatable)")
    parser.add_argument("--profile", help="write a cProfile of one more run of the first variant here")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="igcli config overrides for all runs")
    add_malloc_option(parser)
    args = parser.parse_args()
    malloc = apply_malloc_option(args)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        folder = scratch / "images"
        folder.mkdir()
        paths = make_images(folder, min(args.distinct, args.images), args.images)
        config_path = write_config(scratch, args.depth, args.device, args.size, paths)
        variants = args.variant or [""]
        configs = {v: load_config(config_path, [(t, "--set") for t in args.sets + overrides(v)]) for v in variants}
        job = ImageJob(configs[variants[0]])
        reference = reference_maps(ImageJob(load_config(config_path)), paths[:args.distinct], args.reference_steps)
        captum_module = _plain_module(args.depth, scratch / "resnet.pt", job.device)
        times = {name: [] for name in ["captum"] + variants}
        maps, evals = {}, {}
        for repeat in range(args.repeats):
            seconds, maps["captum"] = captum_loop(captum_module, job, folder, scratch / f"captum{repeat}")
            times["captum"].append(seconds)
            for index, (variant, config) in enumerate(configs.items()):
                seconds, maps[variant], evals[variant] = igcli_run(config, folder, scratch / f"igcli{index}-{repeat}",
                                                                   threads(variant))
                times[variant].append(seconds)
        bare = {v: _bare_rate(v, c, args.size) for v, c in configs.items()}
        if args.profile:
            _profile(configs[variants[0]], folder, scratch / "profiled", threads(variants[0]), args.profile)
    device = torch.cuda.get_device_name(job.device) if job.device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {device}; {platform.machine()}, torch {torch.__version__}; ResNet-{args.depth} 3x{args.size}x{args.size}, "
          f"{args.images} images ({args.distinct} distinct), medians of {args.repeats} alternating runs, {malloc}; "
          f"igcli overrides: {' '.join(args.sets) or 'none'}")
    print("| run | images/s | vs captum | gradient evals/image | completeness error | map error, max pixel "
          "| map error, L2 | bare fwd+grad evals/s | igcli evals/s vs bare |")
    print("|---|---|---|---|---|---|---|---|---|")
    captum_rate = args.images / statistics.median(times["captum"])
    row = accuracy(maps["captum"], reference)
    print(f"| captum loop (GL, 50 steps, float32) | {captum_rate:.1f} | 1.00x | 50 | "
          + " | ".join(f"{v:.2e}" for v in row) + " | | |")
    for variant, config in configs.items():
        rate = args.images / statistics.median(times[variant])
        row = accuracy(maps[variant], reference) if maps[variant] else (float("nan"),) * 3
        print(f"| igcli explain ({variant or 'defaults'}) | {rate:.1f} | "
              f"{rate / captum_rate:.2f}x | {evals[variant]:.1f} | " + " | ".join(f"{v:.2e}" for v in row)
              + f" | {bare[variant]:,.0f} | {rate * evals[variant] / bare[variant]:.2f}x |")


def _bare_rate(variant: str, config, size: int) -> float:
    with applied({"cudnn_benchmark": threads(variant).get("cudnn_benchmark", 0)}):
        job = ImageJob(config)  # batch_size may be auto: the job's resolved total
        return bare_rate(job, job.batch.points * (job.in_flight if job.device.type == "cpu" else 1), size)


def _profile(config, folder: Path, out: Path, settings: dict[str, int], path: str) -> None:
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    igcli_run(config, folder, out, settings)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(60)
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
    Path(path).write_text(text.getvalue())


def _plain_module(depth: int, state: Path, device: torch.device) -> torch.nn.Module:
    """The model as a user would load it for captum: eval mode, default memory format, float32."""
    from resnet import resnet18, resnet50

    module = (resnet50 if depth == 50 else resnet18)()
    module.load_state_dict(torch.load(state, weights_only=True))
    return module.to(device).eval()


if __name__ == "__main__":
    main()
