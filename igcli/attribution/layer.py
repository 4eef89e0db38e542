"""IG at an inner layer (captum's LayerIntegratedGradients): the straight path runs between the
layer's outputs at the baseline and at the input, so completeness holds at the layer:
sum of the layer map = F(x) - F(x'). The engine integrates it as it does any path, over rows
[h, x] that a layer backend (backends/layer.py) turns back into a forward with h in place.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import torch
import torch.nn.functional as functional
from torch import Tensor

from igcli.attribution.engine import Explanation, Quadrature, TargetSpec, attribute
from igcli.attribution.storage import MapStorage
from igcli.backends.base import Backend, Batching


class LayerRows(Backend, Protocol):
    """A Backend over rows [h, x] (backends/layer.LayerBackend)."""

    layer_shape: tuple[int, ...]
    layer_size: int

    def activations(self, x: Tensor) -> Tensor: ...

    def rows(self, h: Tensor, x: Tensor) -> Tensor: ...


def explain_layer(backend: LayerRows, inputs: Tensor, baselines: Tensor, target: TargetSpec, quadrature: Quadrature,
                  batch: Batching, map_buffers: MapStorage | None = None) -> list[Explanation]:
    """Layer IG of ``inputs`` [N, ...] against ``baselines`` [N, K, ...]: Explanations whose
    attributions are shaped like the layer's output."""
    inputs = inputs.to(backend.device, backend.dtype)
    flat = baselines.to(backend.device, backend.dtype).flatten(0, 1)
    per_input = baselines.shape[1]
    h_inputs = _activations(backend, inputs, batch.points)
    h_baselines = _activations(backend, flat, batch.points)
    rows = backend.rows(h_inputs, inputs)
    # The baselines' rows keep their input's x: only the layer's part of the path moves.
    start_rows = backend.rows(h_baselines, inputs.repeat_interleave(per_input, dim=0))
    explanations = attribute(backend, rows, start_rows.view((len(inputs), per_input, -1)), target, quadrature,
                           batch, map_buffers)
    shape = backend.layer_shape
    return [replace(e, attributions=e.attributions[: backend.layer_size].reshape(shape)) for e in explanations]


def _activations(backend: LayerRows, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([backend.activations(x[start : start + batch_size]) for start in range(0, len(x), batch_size)])


def layer_map_to_input(attributions: Tensor, size: tuple[int, int]) -> Tensor:
    """A layer map [C, h, w] summed over channels and bilinearly upsampled to the input's
    ``size`` (H, W): [1, H, W], for the heatmap. A map without two spatial axes is refused."""
    if attributions.dim() != 3:
        raise ValueError(f"a layer map shaped {list(attributions.shape)} has no [channels, height, width] to draw")
    summed = attributions.sum(0, keepdim=True)[None]
    return functional.interpolate(summed, size=size, mode="bilinear", align_corners=False)[0]
