"""Where a softmax explanation's gradient lives along the path, over held-out digits.

For each digit, the attribution density d(alpha) = dF/dx (x' + alpha (x - x')) * (x - x') on a
grid of 1,024 intervals (alpha 0 taken at the rule's start offset, as every rule takes it), F the
configured softmax of the predicted class, x' black. Printed:

- ||d|| at alpha 0 and 1 as a share of its peak along the path: what an evaluation at a
  saturated end adds to the integral;
- how many ends the adaptive rule, as configured, takes as flat instead of evaluating
  (``adaptive.PathEnds``): the records' evaluations against their intervals + 1;
- the width of the alpha range that holds 90% of the density's mass (L1 over pixels);
- against the grid's trapezoid (within 1e-3 of the 1,024-step Gauss-Legendre reference), the L2
  map error of the trapezoid on m + 1 uniform nodes, and of the best weighting of the same nodes
  any estimator could find (least squares, knowing the answer): how much a better estimate from
  the same evaluations could gain at most.

    python benchmarks/path_profile.py [--images 120]
"""
from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch
from end_to_end import CONFIG
from evaluations import write_held_out

from igcli.attribution.engine import TargetSpec, attribute, start_offset
from igcli.config import load_config
from igcli.data.discover import discover_inputs
from igcli.pipeline.image_job import ImageJob

GRID = 1024


def densities(job: ImageJob, x: torch.Tensor, baseline: torch.Tensor, target: int) -> np.ndarray:
    """d(alpha) on the grid, [GRID + 1, pixels], float64."""
    alphas = torch.arange(GRID + 1, dtype=x.dtype) / GRID
    alphas[0] = start_offset(x.dtype)
    points = baseline + alphas.view((-1,) + (1,) * x.dim()) * (x - baseline)
    selector = torch.zeros(len(points), job.backend.scores(x[None]).shape[1], dtype=x.dtype)
    selector[:, target] = 1
    grads = torch.cat([job.backend.scores_and_grads(points[i:i + 128], selector[i:i + 128])[1]
                       for i in range(0, len(points), 128)])
    return (grads * (x - baseline)).flatten(1).double().numpy()


def uniform_errors(d: np.ndarray, truth: np.ndarray, intervals: int) -> tuple[float, float]:
    """Relative L2 error of the trapezoid on ``intervals`` uniform intervals, and of the best
    weighting of the same nodes."""
    nodes = d[np.arange(intervals + 1) * GRID // intervals]
    trapezoid = (nodes[:-1] + nodes[1:]).sum(0) / (2 * intervals)
    weights, *_ = np.linalg.lstsq(nodes.T, truth, rcond=None)
    norm = np.linalg.norm(truth)
    return float(np.linalg.norm(trapezoid - truth) / norm), float(np.linalg.norm(nodes.T @ weights - truth) / norm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=120)
    args = parser.parse_args()
    torch.manual_seed(0)
    job = ImageJob(load_config(CONFIG, [("device=cpu", "--set")]))
    with tempfile.TemporaryDirectory() as scratch:
        write_held_out(Path(scratch), args.images)
        refs = list(discover_inputs([scratch], (".png",)))
        xs = torch.stack([next(job.read([ref])).x for ref in refs])
    baseline = torch.full_like(xs[0], -1.0)  # black, normalised as configs/digits.yaml normalises
    records = attribute(job.backend, xs, baseline.expand(len(xs), 1, *xs.shape[1:]), TargetSpec("predicted"),
                      job.quadrature, batch_size=job.config.batch_size)
    flat_ends = np.array([r.steps + 1 - r.gradient_evals for r in records])
    ends, widths, errors = [], [], {m: [] for m in (8, 16, 20, 24, 32)}
    for x, record in zip(xs, records):
        d = densities(job, x, baseline, record.target)
        norms = np.linalg.norm(d, axis=1)
        ends.append(norms[[0, -1]] / norms.max())
        mass = np.cumsum(np.abs(d).sum(1))
        mass /= mass[-1]
        widths.append((np.searchsorted(mass, 0.95) - np.searchsorted(mass, 0.05)) / GRID)
        truth = (d[:-1] + d[1:]).sum(0) / (2 * GRID)
        for m in errors:
            errors[m].append(uniform_errors(d, truth, m))
    ends = np.array(ends)
    print(f"# {platform.machine()}, torch {torch.__version__}, {args.images} held-out digits, softmax of the "
          f"predicted class, black baseline, {GRID} grid intervals")
    print("| ||d|| at the end / its peak | median | 90th percentile | 99th percentile |")
    print("|---|---|---|---|")
    for column, name in enumerate(["alpha 0", "alpha 1"]):
        print(f"| {name} | " + " | ".join(f"{v:.1e}" for v in np.percentile(ends[:, column], [50, 90, 99])) + " |")
    print(f"\nEnds the adaptive rule took as flat: {flat_ends.mean():.2f} per path "
          f"(both {np.mean(flat_ends == 2):.0%}, one {np.mean(flat_ends == 1):.0%}, none {np.mean(flat_ends == 0):.0%}).")
    print(f"Width of the alpha range holding 90% of the density's mass: median {np.median(widths):.2f}, "
          f"10th-90th percentile {np.percentile(widths, 10):.2f}-{np.percentile(widths, 90):.2f}.\n")
    print("| uniform nodes | trapezoid L2 error | best weighting of the same nodes (knowing the answer) |")
    print("|---|---|---|")
    for m, rows in errors.items():
        mean = np.mean(rows, axis=0)
        print(f"| {m + 1} | {mean[0]:.2e} | {mean[1]:.2e} |")


if __name__ == "__main__":
    main()
