"""How path points are cut into backend calls: a few padded batch shapes, halved on device OOM.

The engine asks a ``Batching`` (backends/base.py) for its calls; ``BatchSize`` is the policy runs
use. Padding bounds the batch shapes a run meets: oneDNN (torch's CPU convolutions) builds and
keeps kernels per shape, so every new size costs memory and build time
(see docs/performance.md#padding).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from igcli.backends.base import Backend

log = logging.getLogger("igcli")
# Batches are padded to a multiple of batch_size / SHAPE_BUCKETS points, so a run meets at most
# that many batch shapes.
SHAPE_BUCKETS = 8


def padded_size(rows: int, batch_size: int) -> int:
    """``rows`` rounded up to a multiple of batch_size / SHAPE_BUCKETS (see SHAPE_BUCKETS)."""
    step = max(1, batch_size // SHAPE_BUCKETS)
    return max(rows, min(batch_size, -(-rows // step) * step))


def pad_rows(x: Tensor, size: int) -> Tensor:
    """``x`` with copies of its first row appended up to ``size`` rows."""
    if size == len(x):
        return x
    return torch.cat([x, x[:1].expand(size - len(x), *x.shape[1:])])


def batched_scores(backend: Backend, x: Tensor, batch_size: int) -> Tensor:
    """F(x) for any number of rows, ``batch_size`` at a time, each call padded to a bucket."""
    parts = []
    for start in range(0, len(x), batch_size):
        rows = x[start : start + batch_size]
        parts.append(backend.scores(pad_rows(rows, padded_size(len(rows), batch_size)))[: len(rows)])
    return torch.cat(parts)


@dataclass
class BatchSize:
    """Path points per forward/backward; shared by a run's calls, so that a size lowered after an
    out-of-memory error stays lowered."""

    points: int
    lowered: bool = False

    def padded(self, rows: int) -> int:
        """The rows a call of ``rows`` points is padded to."""
        return padded_size(rows, self.points)

    def scores(self, backend: Backend, x: Tensor) -> Tensor:
        return batched_scores(backend, x, self.points)

    def scores_and_grads(self, backend: Backend, points: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """The backend's answer; on device out-of-memory, halve the batch (for the rest of the run too)."""
        try:
            return backend.scores_and_grads(points, weights)
        except torch.cuda.OutOfMemoryError:
            if len(points) == 1:
                raise
            half = len(points) // 2
            if not self.lowered:
                log.warning("out of device memory at %d points per batch; halving it until it fits", len(points))
            self.points, self.lowered = min(self.points, half), True
            if points.is_cuda:
                torch.cuda.empty_cache()
            first = self.scores_and_grads(backend, points[:half], weights[:half])
            second = self.scores_and_grads(backend, points[half:], weights[half:])
            return torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]])
