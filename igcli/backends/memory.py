"""``batch_size: auto``: path points per backward from the model's measured activation memory.

A backward holds what the forward saved for it (activations, masks, indices), batch after batch,
so a batch's memory grows with its points times the bytes each point saves. That size is measured
here, not guessed: one forward at two probe batch sizes under torch.autograd.graph.
saved_tensors_hooks, counting each saved storage once and leaving out the model's parameters. The
count is exact and the same on every run (unlike RSS growth, which the allocator's caching and
oneDNN's workspaces blur), and costs two small forward + backward passes.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger("igcli")

# The points a CPU batch may hold: more runs no faster on the CPU and only costs memory
# (see docs/performance.md#batch-size).
MAX_POINTS = 256
GPU_POINTS = 256  # on a GPU; an out-of-memory error halves it (backends/batching.py)
FALLBACK_POINTS = 64  # where activations cannot be measured (onnxruntime) or the input size is not known yet
# What one batch's forward + backward may add to the process's memory: the smaller of this and a
# share of the memory available. The chunks in flight share it (overlap.points_per_chunk).
BUDGET_BYTES = 512 << 20
BUDGET_SHARE_OF_AVAILABLE = 0.25
# A forward + backward grows RSS by more than its saved activations (the backward's gradients of
# the widest layers, oneDNN's layout copies); see docs/performance.md#batch-size.
PEAK_OVER_SAVED = 1.5
PROBE_POINTS = (1, 2)


def saved_bytes(backend, x: Tensor) -> int:
    """Bytes the forward of ``backend`` on ``x`` saves for its backward, parameters left out: each
    storage once (views of one storage count once)."""
    constants = {t.untyped_storage().data_ptr() for t in _constants(backend)}
    storages: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in constants and storage.device.type != "meta":
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    # F = the sum of every output, whatever their shape (classes, or a segmentation's pixels):
    # what the network below saves does not depend on the head.
    summed = backend.with_head(_output_sum)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        summed.scores_and_grads(x, torch.ones(len(x), 1, dtype=backend.dtype, device=x.device))
    return sum(storages.values())


def _output_sum(outputs: Tensor) -> Tensor:
    return outputs.flatten(1).sum(1, keepdim=True)


def bytes_per_point(backend, example: Tensor) -> float:
    """Saved-activation bytes each path point adds, from ``example`` [C, ...] at two probe batches."""
    small, large = (saved_bytes(backend, _batch(backend, example, n)) for n in PROBE_POINTS)
    return max(large - small, 1) / (PROBE_POINTS[1] - PROBE_POINTS[0])


def auto_points(backend, example: Tensor | None, device: torch.device) -> int:
    """Path points per backward (all chunks in flight together) for ``batch_size: auto``."""
    if device.type != "cpu":
        return GPU_POINTS
    if example is None or not hasattr(backend, "with_head"):
        return FALLBACK_POINTS
    per_point = bytes_per_point(backend, example) * PEAK_OVER_SAVED
    budget = min(BUDGET_BYTES, BUDGET_SHARE_OF_AVAILABLE * available_bytes())
    points = int(max(1, min(MAX_POINTS, budget // per_point)))
    points = points - points % 8 if points >= 16 else points  # even shares of the batch's 8 padded sizes
    log.info("batch_size auto: %d points (%.1f MiB saved per point, measured)", points, per_point / PEAK_OVER_SAVED / 2**20)
    return points


def available_bytes() -> float:
    """Memory the system can give without swapping: MemAvailable where Linux reports it."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return float(4 << 30)


def _batch(backend, example: Tensor, points: int) -> Tensor:
    return example.to(backend.device, backend.dtype).unsqueeze(0).expand((points,) + tuple(example.shape)).clone()


def _constants(backend) -> list[Tensor]:
    module = backend.module
    return list(module.parameters()) + list(module.buffers()) + _graph_constants(module)


def _graph_constants(module) -> list[Tensor]:
    """Tensors held as plain attributes (fx graphs' constants, converted ONNX initializers)."""
    return [value for m in module.modules() for value in vars(m).values() if isinstance(value, Tensor)]
