"""Gradient evaluations per second on the CPU: onnxruntime backend vs torch backend vs captum.

Same model, inputs and batch for all three, measured in this process; ratios are against captum's
IntegratedGradients (gausslegendre, 50 steps, internal_batch_size = the same batch).

    python benchmarks/onnx_backends.py [--batch 64] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from captum.attr import IntegratedGradients
from torch import nn

from igcli.backends.base import ScoreKind
from igcli.backends.loading import load_model

REPO = Path(__file__).resolve().parents[1]


def resnet_like(seed: int = 0) -> nn.Module:
    """A small residual CNN for 3x48x192 inputs (text-line sized), random weights."""
    torch.manual_seed(seed)

    class Block(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
            self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)

        def forward(self, x):
            return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))

    return nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(), Block(32), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), Block(64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    ).eval()


def median_rate(run, count: int, repeats: int) -> float:
    """Items per second of ``run`` (which handles ``count`` items): the median of timed repeats."""
    run()  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return count / statistics.median(seconds)


def evals_per_second(backend, x: torch.Tensor, repeats: int) -> float:
    weights = torch.zeros(len(x), 10)
    weights[:, 0] = 1
    return median_rate(lambda: backend.scores_and_grads(x, weights), len(x), repeats)


def captum_evals_per_second(module: nn.Module, x: torch.Tensor, batch: int, repeats: int) -> float:
    ig = IntegratedGradients(lambda inputs: torch.softmax(module(inputs), 1))
    images = x[: max(1, batch // 50)]
    return median_rate(lambda: ig.attribute(images, target=0, n_steps=50, internal_batch_size=batch),
                       len(images) * 50, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("IGCLI_CACHE_DIR", tempfile.mkdtemp())
    cpu = torch.device("cpu")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}")
    with tempfile.TemporaryDirectory() as folder:
        resnet_path = Path(folder) / "resnet_like.pt2"
        example = torch.randn(2, 3, 48, 192)
        batch_dim = torch.export.Dim("batch", min=1, max=4096)
        torch.export.save(torch.export.export(resnet_like(), (example,), dynamic_shapes=({0: batch_dim},)),
                          str(resnet_path))
        cases = {"digits CNN 1x32x32": (REPO / "sample_data/models/digits_cnn.pt2", (1, 32, 32)),
                 "residual CNN 3x48x192": (resnet_path, (3, 48, 192))}
        print("| model | captum evals/s | torch backend evals/s | onnxruntime backend evals/s | torch / captum "
              "| onnxruntime / captum |")
        print("|---|---|---|---|---|---|")
        for name, (path, shape) in cases.items():
            x = torch.randn((args.batch,) + shape, generator=torch.Generator().manual_seed(0))
            on_torch = load_model(path, None, ScoreKind.softmax, cpu)
            on_ort = load_model(path, None, ScoreKind.softmax, cpu, backend="onnxruntime")
            captum = captum_evals_per_second(on_torch.module, x, args.batch, args.repeats)
            torch_rate = evals_per_second(on_torch, x, args.repeats)
            ort_rate = evals_per_second(on_ort, x, args.repeats)
            print(f"| {name} | {captum:,.0f} | {torch_rate:,.0f} | {ort_rate:,.0f} | {torch_rate / captum:.2f}x "
                  f"| {ort_rate / captum:.2f}x |")


if __name__ == "__main__":
    main()
