"""Forward + input-gradient rate of ResNet-50 on one device under each speed lever, and what each
costs in accuracy: which levers igcli's torch backend should pull on a GPU.

Every row times igcli's TorchBackend.scores_and_grads (parameters frozen, channels-last) on a batch
of ``--batch`` seeded 224x224 inputs, median of ``--repeats`` timed calls after warm-up, rotating
among three input batches so no row times a cache. Levers, each added to the one before unless
said otherwise:

- ``default``: the backend as igcli builds it today.
- ``cudnn_benchmark``: cuDNN's autotuner picks each convolution's algorithm by timing them.
- ``fold_bn``: eval-mode batch norms folded into the convolutions before them (torch.fx), which
  removes their forward and backward passes over every activation.
- ``compile``: torch.compile of the folded model (inductor fuses the elementwise work); the
  compile time is printed apart.
- ``bfloat16`` (on ``cudnn_benchmark``, not cumulative): autocast, for scale only.

Accuracy: the input gradients of 8 inputs against float64, as relative L2 error; float32 with
TF32 off is printed for scale (the random network amplifies rounding on some inputs).

    python benchmarks/gpu_levers.py --device cuda [--batch 256] [--repeats 10] [--no-compile]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from resnet import resnet50
from torch import nn

from igcli.backends.base import Precision, ScoreKind
from igcli.backends.torch_backend import TorchBackend


def timed_rate(backend: TorchBackend, batches: list[torch.Tensor], weights: torch.Tensor, repeats: int) -> float:
    for x in batches:
        backend.scores_and_grads(x, weights)
    times = []
    for index in range(repeats):
        _sync(weights.device)
        start = time.perf_counter()
        backend.scores_and_grads(batches[index % len(batches)], weights)
        _sync(weights.device)
        times.append(time.perf_counter() - start)
    return len(weights) / statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def grads(backend: TorchBackend, x: torch.Tensor) -> torch.Tensor:
    weights = torch.zeros(len(x), 1000, device=x.device)
    weights[:, 3] = 1
    return backend.scores_and_grads(x, weights)[1].float()


def reference_grads(x: torch.Tensor) -> torch.Tensor:
    return grads(TorchBackend(resnet50().double(), ScoreKind.softmax, x.device), x.double()).double()


def without_tf32_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """float32 rounding alone, for scale: the default backend with TF32 off against float64."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        return relative_error(grads(TorchBackend(resnet50(), ScoreKind.softmax, x.device), x), reference)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference).norm() / reference.norm())


def folded(module: nn.Module) -> nn.Module:
    from torch.fx.experimental.optimization import fuse

    return fuse(module.eval())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(args.batch, 3, 224, 224, generator=generator).to(device) for _ in range(3)]
    weights = torch.zeros(args.batch, 1000, device=device)
    weights[torch.arange(args.batch), torch.arange(args.batch) % 1000] = 1
    probe = batches[0][:8]
    reference = reference_grads(probe)

    def row(name: str, backend: TorchBackend, benchmark: bool) -> None:
        torch.backends.cudnn.benchmark = benchmark
        rate = timed_rate(backend, batches, weights, args.repeats)
        error = relative_error(grads(backend, probe), reference)
        print(f"| {name} | {rate:,.0f} | {error:.2e} |", flush=True)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# {name}; torch {torch.__version__}; ResNet-50 3x224x224, "
          f"batch {args.batch}, median of {args.repeats}")
    print(f"# float32 with TF32 off: gradient error {without_tf32_error(probe, reference):.2e} against float64")
    print("| lever | fwd+input-grad evals/s | gradient error against float64 |")
    print("|---|---|---|")
    row("default", TorchBackend(resnet50(), ScoreKind.softmax, device), False)
    row("cudnn_benchmark", TorchBackend(resnet50(), ScoreKind.softmax, device), True)
    row("cudnn_benchmark, bfloat16",
        TorchBackend(resnet50(), ScoreKind.softmax, device, precision=Precision.bfloat16), True)
    row("cudnn_benchmark + fold_bn", TorchBackend(folded(resnet50()), ScoreKind.softmax, device), True)
    if not args.no_compile:
        try:
            row("cudnn_benchmark + fold_bn + compile", compiled_backend(device, batches[0], weights), True)
        except Exception as error:  # a failed compile is a finding here, not a crash
            print(f"# compile failed: {type(error).__name__}: {str(error).splitlines()[0]}")


def compiled_backend(device: torch.device, x: torch.Tensor, weights: torch.Tensor) -> TorchBackend:
    backend = TorchBackend(folded(resnet50()), ScoreKind.softmax, device)
    backend.module = torch.compile(backend.module)
    torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    backend.scores_and_grads(x, weights)
    _sync(device)
    print(f"# compile + first call: {time.perf_counter() - start:.1f} s", flush=True)
    return backend

if __name__ == "__main__":
    main()
