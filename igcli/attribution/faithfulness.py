"""Faithfulness metrics of attribution maps: tensors and a Backend only (docs/nightly.md).

- Deletion and insertion AUC (Petsiuk et al., RISE, BMVC 2018; insertion from a blurred input as in
  Kapishnikov et al., XRAI, ICCV 2019): features go in order of attribution, highest first, in
  ``steps`` equal steps; F of the target is read at each of the ``steps + 1`` points, and the area
  under that curve over the fraction moved, [0, 1], by the trapezoid rule. Deletion replaces the
  input's features by the fill (lower is more faithful); insertion puts them into the fill (higher).
- Infidelity (Yeh et al., NeurIPS 2019, as captum.metrics.infidelity computes it, normalize=False):
  mean over perturbations I of (sum(I * attr) - (F(x) - F(x - I)))^2.
- Max-sensitivity (same paper, as captum.metrics.sensitivity_max): the largest, over perturbed
  inputs x + d with d uniform in [-radius, radius], of ||attr(x) - attr(x + d)|| / ||attr(x)||
  (Frobenius norms; a zero map's norm counts as 1).

A "unit" is what moves together: a pixel (all its channels) or a token (its whole embedding).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from igcli.attribution.engine import FixedBatches
from igcli.backends.base import Backend

# [M, units] bool -> [M, *input shape] bool: which input elements each unit covers
UnitExpander = Callable[[Tensor], Tensor]


def pixel_units(shape: tuple[int, ...]) -> tuple[int, UnitExpander]:
    """Units of a [C, H, W] input: its H * W pixels, every channel of a pixel together."""
    channels, height, width = shape
    return height * width, lambda mask: mask.view(-1, 1, height, width).expand(-1, channels, height, width)


def token_units(shape: tuple[int, ...]) -> tuple[int, UnitExpander]:
    """Units of an [L, D] input: its L tokens, each token's whole embedding together."""
    length, width = shape
    return length, lambda mask: mask.view(-1, length, 1).expand(-1, length, width)


def unit_scores(attributions: Tensor, kind: str) -> Tensor:
    """[N, units]: a pixel's attribution summed over channels, a token's over its embedding."""
    if kind == "pixel":
        return attributions.sum(1).flatten(1)
    return attributions.sum(-1)


def deletion_insertion(backend: Backend, inputs: Tensor, fill: Tensor, scores: Tensor, targets: Tensor,
                       expand: UnitExpander, steps: int = 20, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Deletion and insertion AUC per input, [N] each (float64).

    Args:
        inputs, fill: [N, *shape]: the inputs and what replaces a unit (blurred input, baseline).
        scores: [N, units] per-unit attribution; the order is by score, highest first, ties by index.
        targets: [N] the class whose F each curve follows.
        expand: maps a [M, units] mask to the inputs' elements (pixel_units, token_units).
        steps: the curve's steps; each moves about units / steps units.
    """
    count, units = scores.shape
    order = torch.sort(scores.double(), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(units).expand(count, units).contiguous())
    moved = torch.round(torch.arange(steps + 1, dtype=torch.float64) * units / steps).long()  # [S+1]
    fractions = moved.double() / units
    rows = torch.arange(count).repeat_interleave(steps + 1)  # curve point p: input p // (S+1), step p % (S+1)
    curves = []
    for start, end in ((inputs, fill), (fill, inputs)):  # deletion, then insertion
        f = torch.empty(len(rows), dtype=torch.float64)
        for first in range(0, len(rows), batch_size):  # built a batch at a time: a whole curve set may not fit
            batch = rows[first : first + batch_size]
            step = torch.arange(first, first + len(batch)) % (steps + 1)
            mask = expand(rank[batch] < moved[step, None]).to(inputs.device)
            points = torch.where(mask, end[batch], start[batch]).to(backend.device, backend.dtype)
            f[first : first + len(batch)] = FixedBatches(batch_size).scores(backend, points).double().cpu()[
                torch.arange(len(batch)), targets[batch]]
        curves.append(f.view(count, steps + 1))
    deletion, insertion = (torch.trapezoid(curve, fractions, dim=1) for curve in curves)
    return deletion, insertion


def gaussian_perturbations(shape: tuple[int, ...], samples: int, sigma: float, seed: int) -> Tensor:
    """[samples, *shape] N(0, sigma^2) perturbations from their own generator (the same per seed)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((samples,) + tuple(shape), generator=generator, dtype=torch.float64) * sigma


def uniform_perturbations(shape: tuple[int, ...], samples: int, radius: float, seed: int) -> Tensor:
    """[samples, *shape] perturbations uniform in the L-infinity ball of ``radius`` (captum's default)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand((samples,) + tuple(shape), generator=generator, dtype=torch.float64) * 2 - 1) * radius


def infidelity(backend: Backend, inputs: Tensor, attributions: Tensor, targets: Tensor, perturbations: Tensor,
               batch_size: int = 256) -> Tensor:
    """[N] infidelity: mean over the K perturbations I [N, K, *shape] of
    (sum(I * attr) - (F(x) - F(x - I)))^2."""
    count, samples = perturbations.shape[:2]
    x = inputs.double()
    perturbed = (x[:, None] - perturbations).flatten(0, 1)
    rows = torch.cat([x, perturbed]).to(backend.device, backend.dtype)
    f = FixedBatches(batch_size).scores(backend, rows).double().cpu()
    f_input = f[torch.arange(count), targets]
    f_perturbed = f[count:][torch.arange(count * samples), targets.repeat_interleave(samples)].view(count, samples)
    dot = (perturbations * attributions.double()[:, None]).flatten(2).sum(2)
    return ((dot - (f_input[:, None] - f_perturbed)) ** 2).mean(1)


def max_sensitivity(explain_fn: Callable[[Tensor], Tensor], inputs: Tensor, attributions: Tensor,
                    perturbations: Tensor) -> Tensor:
    """[N] max-sensitivity. ``explain_fn`` maps [M, *shape] inputs (row i perturbing input
    i // K) to their maps; ``perturbations`` [N, K, *shape]."""
    count, samples = perturbations.shape[:2]
    perturbed = (inputs.double()[:, None] + perturbations).flatten(0, 1).to(inputs.dtype)
    maps = explain_fn(perturbed).double().view(count, samples, -1)
    reference = attributions.double().reshape(count, 1, -1)
    norm = reference.norm(dim=2)
    norm = torch.where(norm == 0, torch.ones_like(norm), norm)
    return ((reference - maps).norm(dim=2) / norm).max(1).values
