"""SmoothGrad over IG: IG averaged over noisy copies of each input (captum's NoiseTunnel, smoothgrad).

The copies of all inputs go through one engine call, so their path points share batches and the
adaptive rule refines each copy's path on its own. Targets are chosen on the clean input, so every
copy explains the same class. Completeness holds for the average: the mean map sums to
mean_k F(x + e_k) - F(x').
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from igcli.attribution.engine import Explanation, Quadrature, TargetSpec, attribute, completeness_met, resolve_targets
from igcli.attribution.storage import MapStorage
from igcli.backends.base import Backend, Batching


@dataclass(frozen=True)
class Smoothing:
    """``samples`` noisy copies per input; ``sigma``: the noise's standard deviation in the
    inputs' own units, a number or one per channel."""

    samples: int
    sigma: float | tuple[float, ...]


def add_noise(inputs: Tensor, samples: int, sigma: float | tuple[float, ...],
              generator: torch.Generator | None = None) -> Tensor:
    """[N * samples, ...]: each input repeated ``samples`` times (consecutively) plus Gaussian noise,
    drawn as captum's NoiseTunnel draws it (one normal draw over the whole expanded tensor)."""
    expanded = inputs.repeat_interleave(samples, dim=0)
    # Drawn in float32 on the CPU whatever the inputs: the same seed gives the same noise everywhere.
    std = torch.as_tensor(sigma, dtype=torch.float32)
    if std.dim() == 1:  # per channel
        std = std.view((-1,) + (1,) * (inputs.dim() - 2))
    noise = torch.normal(0.0, std.expand(expanded.shape).contiguous(), generator=generator)
    return expanded + noise.to(inputs.device, inputs.dtype)


@dataclass
class Smoothed:
    """The averaged explanations (f_input: the mean of F over the copies) and F at each clean input."""

    explanations: list[Explanation]
    f_clean: list[float]  # per explanation: F_target of its clean input


def explain_smoothed(backend: Backend, inputs: Tensor, noisy: Tensor, baselines: Tensor, target: TargetSpec,
                     quadrature: Quadrature, batch: Batching, map_buffers: MapStorage | None = None) -> Smoothed:
    """IG of every noisy copy (``noisy`` [N * k, ...] from ``add_noise``) against its input's
    ``baselines`` [N, K, ...], averaged per (input, target)."""
    samples = len(noisy) // len(inputs)
    f_clean = batch.scores(backend, inputs.to(backend.device, backend.dtype)).cpu()
    targets = resolve_targets(f_clean, target)
    copies = attribute(backend, noisy, baselines.repeat_interleave(samples, dim=0), target, quadrature, batch,
                     map_buffers, targets=[targets[n // samples] for n in range(len(noisy))])
    by_group: dict[tuple[int, int], list[Explanation]] = {}
    for e in copies:
        by_group.setdefault((e.input_index // samples, e.target), []).append(e)
    explanations, clean = [], []
    for (n, cls), group in by_group.items():
        explanations.append(_average(n, group, quadrature.tolerance))
        clean.append(float(f_clean[n, cls]))
    return Smoothed(explanations, clean)


def _average(input_index: int, copies: list[Explanation], tolerance: float) -> Explanation:
    """One Explanation for the mean of ``copies``' maps, its completeness judged on the mean."""
    count = len(copies)
    attributions = torch.stack([e.attributions for e in copies]).mean(0)
    f_input = sum(e.f_input for e in copies) / count
    f_baseline = sum(e.f_baseline for e in copies) / count
    total = float(attributions.double().sum())
    change = abs(f_input - f_baseline)
    error = abs(total - (f_input - f_baseline))
    noise = max(64 * torch.finfo(attributions.dtype).eps * (abs(e.f_input) + abs(e.f_baseline)) for e in copies)
    met = bool(completeness_met(torch.tensor(error), torch.tensor(change), torch.tensor(noise), tolerance))
    stopped = [e.stopped_by for e in copies]
    map_errors = [e.map_error for e in copies if e.map_error is not None]
    return replace(
        copies[0], input_index=input_index, attributions=attributions, f_input=f_input, f_baseline=f_baseline,
        attribution_sum=total, abs_error=error, rel_error=error / change if change > 0 else None,
        steps=max(e.steps for e in copies), gradient_evals=sum(e.gradient_evals for e in copies),
        converged=met and all(e.converged for e in copies),
        stopped_by="max_steps" if "max_steps" in stopped else stopped[0],
        map_error=max(map_errors) if map_errors else None, within_noise=change <= noise,
        baseline_probability=sum(e.baseline_probability for e in copies) / count)
