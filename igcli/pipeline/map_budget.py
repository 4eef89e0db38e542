"""Chunk sizes that keep the adaptive rule's stored maps within a memory budget at their worst.

The adaptive rule keeps one map (dF/dx times x - x') per evaluated point until its chunk is done,
so a chunk whose every path runs to ``max_steps`` holds paths x (max_steps + 1) maps. Sizing
chunks for that worst case, rather than for the typical path's ~50 points, bounds the peak memory
of inputs that never converge (noise, saturated models, tolerances out of reach).
"""
from __future__ import annotations

import math

import torch

from igcli.backends.memory import available_bytes

# What the stored maps of all chunks in flight may take at their worst: the smaller of this and a
# share of the memory available (the same budget as one batch's activations, backends/memory.py).
MAP_BUDGET_BYTES = 512 << 20
MAP_BUDGET_SHARE_OF_AVAILABLE = 0.25


def worst_case_map_bytes(inputs: int, paths_per_input: int, max_nodes: int, input_shape: tuple[int, ...],
                         dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the stored maps of ``inputs`` inputs whose every path holds ``max_nodes`` maps."""
    element = torch.empty((), dtype=dtype).element_size()
    return inputs * paths_per_input * max_nodes * math.prod(input_shape) * element


def map_budget_bytes() -> float:
    return min(MAP_BUDGET_BYTES, MAP_BUDGET_SHARE_OF_AVAILABLE * available_bytes())


def inputs_within_map_budget(paths_per_input: int, max_nodes: int, input_shape: tuple[int, ...],
                             in_flight: int, budget: float, dtype: torch.dtype = torch.float32) -> int:
    """The most inputs a chunk may hold so that ``in_flight`` chunks' worst-case maps fit ``budget``
    (at least one: a single input's maps are what the rule needs)."""
    per_input = worst_case_map_bytes(1, paths_per_input, max_nodes, input_shape, dtype)
    return max(1, int(budget // (max(1, in_flight) * per_input)))


def image_chunk_limit(config, in_flight: int, device: torch.device, dtype: torch.dtype) -> int | None:
    """The most inputs an image chunk may hold for its worst-case stored maps on the CPU; None where
    no limit applies (another rule, chunk_inputs set, input size unknown until the first image, or
    a GPU, whose memory the host budget does not describe)."""
    from igcli.attribution.quadrature import Rule
    from igcli.config import TopK

    shape = config.input.model_shape()
    if config.chunk_inputs != "auto" or config.method is not Rule.adaptive or shape is None or device.type != "cpu":
        return None
    paths_per_input = config.baseline.samples * (config.target.top_k if isinstance(config.target, TopK) else 1)
    max_nodes = (config.max_steps if config.steps == "auto" else config.steps) + 1
    within = inputs_within_map_budget(paths_per_input, max_nodes, tuple(shape), in_flight, map_budget_bytes(), dtype)
    return max(1, within // 2)  # a chunk may run to twice its size (run._chunks' window)
