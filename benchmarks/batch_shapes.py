"""Memory against the number of batch shapes met: why the engine pads batches to a few sizes.

Runs the sample CNN's forward + input-gradient (igcli's torch backend) at every batch size from 1
to 256, rounded up to a multiple of ``--step``, three passes, in a fresh process per setting, and
prints the resident set size after each pass. oneDNN keeps kernels per shape met, so memory
follows the number of distinct sizes, not the number of batches.

    python benchmarks/batch_shapes.py [--steps 1 8 32] [--passes 3]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))


def child(channels_last: bool, step: int, passes: int) -> None:
    import torch

    from igcli.backends.base import ScoreKind
    from igcli.backends.loading import load_module
    from igcli.backends.torch_backend import TorchBackend

    module = load_module(REPO / "sample_data" / "models" / "digits_cnn.pt2", None)
    backend = TorchBackend(module, ScoreKind.softmax, "cpu", channels_last=channels_last)
    generator = torch.Generator().manual_seed(0)
    sizes = sorted({-(-n // step) * step for n in range(1, 257)})
    after, start = [rss_mib()], time.perf_counter()
    for _ in range(passes):
        for size in sizes:
            x = torch.randn(size, 1, 32, 32, generator=generator)
            weights = torch.zeros(size, 10)
            weights[:, 3] = 1
            backend.scores_and_grads(x, weights)
        after.append(rss_mib())
    layout = "channels-last" if channels_last else "default (NCHW)"
    print(f"| {layout} | {len(sizes)} | {' / '.join(str(v) for v in after)} | {time.perf_counter() - start:.1f} |",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 8, 32], help="batch sizes are multiples of this")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(bool(args.child[0]), args.child[1], args.passes)
        return
    print("| layout | batch sizes met | RSS at start / after each pass (MiB) | seconds |")
    print("|---|---|---|---|")
    for channels_last in (0, 1):
        for step in args.steps:
            subprocess.run([sys.executable, __file__, "--child", str(channels_last), str(step),
                            "--passes", str(args.passes)], check=True, cwd=REPO)


if __name__ == "__main__":
    main()
