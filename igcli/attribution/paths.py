"""IG along curved paths: Blur IG (Xu et al. 2020), integrated with the engine's rules.

A path gamma(alpha) runs from its start (alpha 0) to the input (alpha 1); IG along it is
A = integral of dF/dx(gamma(alpha)) * gamma'(alpha) dalpha, and completeness reads
sum A = F(x) - F(gamma(0)). Each point's attribution density is the gradient times the path's
velocity there, so the fixed rules' tables and the adaptive rule (adaptive.integrate_locally,
which only needs F and that density at each point) integrate any path as they do the straight one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as functional
from torch import Tensor

from igcli.attribution.adaptive import PathResults, integrate_locally
from igcli.attribution.engine import Explanation, Quadrature, TargetSpec, completeness_met, resolve_targets
from igcli.attribution.quadrature import Rule, nodes, refine
from igcli.attribution.storage import MapStorage
from igcli.backends.base import Backend, Batching

DEFAULT_MAX_SIGMA = 50.0  # pixels: the reference implementation's default, blur enough to erase a 224 px image
REFERENCE_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's cut: taps within 4 sigma, rounded
EXACT_REACH = 8.0  # sigmas an untruncated kernel spans: the taps beyond weigh under exp(-32)


class Path(Protocol):
    """Paths for N inputs: points and velocities at (input, alpha) pairs."""

    def at(self, index: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """gamma_index[i](alpha[i]) and d gamma / d alpha there, each [P, ...]."""
        ...

    def start(self) -> Tensor:
        """gamma(0) of every input, [N, ...]."""
        ...


def gaussian_kernels(sigma: Tensor, radius: int, keep: int, truncate: float | None = None) -> tuple[Tensor, Tensor]:
    """Per sigma [B], the 1-D Gaussian normalised over taps -radius..radius (and, with ``truncate``,
    only the taps within truncate * sigma, rounded, as scipy.ndimage.gaussian_filter keeps), and its
    derivative in sigma; both cut to the central 2 * keep + 1 taps, [B, 2 * keep + 1]. sigma 0: the identity."""
    taps = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    s = sigma.clamp_min(1e-3)[:, None]  # below this every tap but the centre weighs under exp(-5e5)
    inside = taps.abs()[None] <= radius
    if truncate is not None:
        inside = taps.abs()[None] <= (truncate * sigma + 0.5).floor()[:, None]
    bell = torch.where(inside, torch.exp(-0.5 * (taps / s) ** 2), torch.zeros((), dtype=sigma.dtype))
    kernel = bell / bell.sum(1, keepdim=True)
    # d/dsigma of bell / sum(bell), with d bell / d sigma = bell * t^2 / sigma^3.
    spread = taps ** 2 / s ** 3
    derivative = kernel * (spread - (kernel * spread).sum(1, keepdim=True))
    middle = slice(radius - keep, radius + keep + 1)
    return kernel[:, middle], derivative[:, middle]


def blur_rows(x: Tensor, kernel_h: Tensor, kernel_w: Tensor) -> Tensor:
    """Each row of ``x`` [B, C, H, W] filtered by its own separable kernels [B, K] (K odd),
    with zeros outside the image (scipy's mode 'constant')."""
    b, c, h, w = x.shape
    radius = (kernel_h.shape[1] - 1) // 2
    groups = x.reshape(1, b * c, h, w)
    along_h = kernel_h.repeat_interleave(c, dim=0).view(b * c, 1, -1, 1)
    along_w = kernel_w.repeat_interleave(c, dim=0).view(b * c, 1, 1, -1)
    out = functional.conv2d(groups, along_h.to(x.dtype), padding=(radius, 0), groups=b * c)
    out = functional.conv2d(out, along_w.to(x.dtype), padding=(0, radius), groups=b * c)
    return out.view(b, c, h, w)


@dataclass
class BlurPath:
    """Blur IG's path for images [N, C, H, W]: gamma(alpha) = x blurred by a Gaussian of
    sigma = max_sigma * (1 - alpha) pixels, from the most blurred image to x itself.
    ``grad_step``: None for the exact derivative in sigma; a step for the reference
    implementation's forward difference (blur(sigma + step) - blur(sigma)) / step.
    ``truncate``: None for a kernel smooth in sigma; REFERENCE_TRUNCATE for scipy's, as the
    reference implementation blurs (its path jumps where the cut moves, which completeness shows)."""

    inputs: Tensor
    max_sigma: float = DEFAULT_MAX_SIGMA
    grad_step: float | None = None
    truncate: float | None = None

    def _blur(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        # Untruncated, the kernel spans +-EXACT_REACH sigma, so the path is smooth in sigma; cut at
        # truncate * sigma (scipy's way), its support jumps as sigma crosses whole taps.
        reach = self.truncate if self.truncate is not None else EXACT_REACH
        radius = int(reach * (self.max_sigma + (self.grad_step or 0)) + 0.5)
        # Taps past the image's size only ever meet the zero padding: dropped, exactly.
        keep = min(radius, max(self.inputs.shape[-2:]) - 1)
        kernel, derivative = gaussian_kernels(sigma.double(), radius, keep, self.truncate)
        blurred = blur_rows(x, kernel, kernel)
        # d/dsigma of a separable blur: differentiate one axis's kernel at a time.
        slope = blur_rows(x, derivative, kernel) + blur_rows(x, kernel, derivative)
        return blurred, slope

    def at(self, index: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        x = self.inputs.index_select(0, index)
        sigma = self.max_sigma * (1 - alpha.double())
        blurred, slope = self._blur(x, sigma)
        if self.grad_step is not None:
            ahead, _ = self._blur(x, sigma + self.grad_step)
            slope = (ahead - blurred) / self.grad_step
        return blurred, -self.max_sigma * slope  # sigma falls as alpha rises

    def start(self) -> Tensor:
        return self._blur(self.inputs, torch.full((len(self.inputs),), float(self.max_sigma)))[0]


def explain_path(backend: Backend, path: Path, inputs: Tensor, target: TargetSpec, quadrature: Quadrature,
                 batch: Batching, map_buffers: MapStorage | None = None) -> list[Explanation]:
    """IG along ``path`` for each (input, target), in input order then target rank order."""
    inputs = inputs.to(backend.device, backend.dtype)
    starts = path.start().to(backend.device, backend.dtype)
    f_ends = batch.scores(backend, torch.cat([inputs, starts]))
    f_inputs, f_starts = f_ends[: len(inputs)], f_ends[len(inputs):]
    targets = resolve_targets(f_inputs, target)
    groups = [(n, cls, rank if target.ranked else None) for n, classes in enumerate(targets)
              for rank, cls in enumerate(classes, start=1)]
    index = torch.tensor([g[0] for g in groups], dtype=torch.long, device=inputs.device)
    classes = torch.tensor([g[1] for g in groups], dtype=torch.long, device=inputs.device)
    f_input = f_inputs[index, classes].double()
    f_start = f_starts[index, classes].double()
    integral = _Integral(backend, path, index, classes, inputs[:1], f_inputs.shape[1], batch)
    results = integral.run(quadrature, f_input, f_start, map_buffers)
    return path_explanations(groups, results, f_input, f_start, quadrature, f_inputs.shape[1])


class _Integral:
    """The path integral for each (input, target) path, ``batch.points`` points per backward."""

    def __init__(self, backend: Backend, path: Path, index: Tensor, classes: Tensor, like: Tensor, columns: int,
                 batch: Batching):
        self.backend, self.path, self.index, self.classes = backend, path, index, classes
        self.like, self.columns, self.batch = like, columns, batch

    def points(self, which: Tensor, alpha: Tensor) -> Iterator[tuple[slice, Tensor, Tensor]]:
        """(slice, F_target, density dF/dx * gamma') for points (path which[i], alpha[i])."""
        for start in range(0, len(which), self.batch.points):
            part = slice(start, min(start + self.batch.points, len(which)))
            p, count = which[part], part.stop - part.start
            x, velocity = self.path.at(self.index.index_select(0, p), alpha[part])
            x, velocity = x.to(self.like.dtype), velocity.to(self.like.dtype)
            size = self.batch.padded(count)
            if size > count:  # padding rows repeat the first point with zero weight (engine.SHAPE_BUCKETS)
                x = torch.cat([x, x[:1].expand(size - count, *x.shape[1:])])
            selector = x.new_zeros((size, self.columns))
            target = self.classes.index_select(0, p)[:, None]
            selector[:count].scatter_(1, target, 1.0)
            scores, grads = self.batch.scores_and_grads(self.backend, x, selector)
            yield part, scores[:count].gather(1, target).squeeze(1), grads[:count] * velocity

    def run(self, quad: Quadrature, f_input: Tensor, f_start: Tensor, buffers: MapStorage | None) -> PathResults:
        count = len(self.index)
        noise = 64 * torch.finfo(self.like.dtype).eps * (f_input.abs() + f_start.abs())
        like = self.like.expand((count,) + tuple(self.like.shape[1:]))
        if quad.rule is Rule.adaptive:
            return integrate_locally(self._evaluate, like, f_input - f_start, noise, quad, buffers)
        return self._fixed(quad, like, f_input - f_start, noise)

    def _evaluate(self, which: np.ndarray, alpha: np.ndarray, densities: Tensor) -> Tensor:
        device = self.like.device
        scores = torch.empty(len(which), dtype=torch.float64, device=device)
        for part, f, density in self.points(torch.from_numpy(which).to(device), torch.from_numpy(alpha).to(device)):
            densities[part] = density
            scores[part] = f.double()
        return scores

    def _fixed(self, quad: Quadrature, like: Tensor, change: Tensor, noise: Tensor) -> PathResults:
        """A fixed rule's table; with steps auto, refined (nested nodes reused) until completeness holds."""
        count = len(like)
        total = torch.zeros(like.shape, dtype=like.dtype, device=like.device)
        active = torch.arange(count, device=like.device)
        m = quad.steps if quad.steps is not None else min(quad.min_steps, quad.max_steps)
        level, steps, evals = nodes(quad.rule, m), torch.zeros(count, dtype=torch.long), torch.zeros(count, dtype=torch.long)
        converged = torch.zeros(count, dtype=torch.bool)
        while True:
            n = len(level.alphas)
            which = active.repeat_interleave(n)
            alpha = torch.tensor(level.alphas, dtype=torch.float64, device=like.device).repeat(len(active))
            weight = torch.tensor(level.weights, dtype=like.dtype, device=like.device).repeat(len(active))
            for part, _, density in self.points(which, alpha):
                total.index_add_(0, which[part], density * weight[part].view((-1,) + (1,) * (like.dim() - 1)))
            evals[active.cpu()] += n
            steps[active.cpu()] = m
            sums = total.double().flatten(1).sum(1)
            converged = completeness_met((sums - change).abs(), change.abs(), noise, quad.tolerance).cpu()
            if quad.steps is not None:
                return PathResults(total, steps, evals, torch.zeros(count, dtype=torch.bool),
                                   torch.full((count,), float("nan"), dtype=torch.float64))
            active = active[~converged.to(active.device)[active]]
            refinement = refine(quad.rule, m)
            if len(active) == 0 or refinement.steps > quad.max_steps:
                return PathResults(total, steps, evals, converged, torch.full((count,), float("nan"), dtype=torch.float64))
            total[active] *= refinement.keep
            level, m = refinement.new, refinement.steps


def path_explanations(groups, results: PathResults, f_input: Tensor, f_start: Tensor, quad: Quadrature,
                  classes: int) -> list[Explanation]:
    """One Explanation per path, judged as the engine judges a straight one."""
    attributions = results.attributions.detach().cpu()
    sums = attributions.double().flatten(1).sum(1)
    f_input, f_start = f_input.cpu(), f_start.cpu()
    change, noise = (f_input - f_start).abs(), 64 * torch.finfo(attributions.dtype).eps * (f_input.abs() + f_start.abs())
    error = (sums - (f_input - f_start)).abs()
    met = completeness_met(error, change, noise, quad.tolerance)
    out = []
    for g, (n, cls, rank) in enumerate(groups):
        map_error = None if math.isnan(float(results.map_error[g])) else float(results.map_error[g])
        stopped_by = "fixed_steps" if quad.steps is not None else \
            "tolerance" if bool(results.within_tolerance[g]) else "max_steps"
        map_ok = map_error is None or quad.map_tolerance is None or map_error <= quad.map_tolerance
        delta = float(change[g])
        out.append(Explanation(
            input_index=n, target=cls, rank=rank, attributions=attributions[g], f_input=float(f_input[g]),
            f_baseline=float(f_start[g]), attribution_sum=float(sums[g]), abs_error=float(error[g]),
            rel_error=float(error[g]) / delta if delta > 0 else None, steps=int(results.steps[g]),
            gradient_evals=int(results.evaluations[g]), converged=bool(met[g]) and map_ok and stopped_by != "max_steps",
            stopped_by=stopped_by, map_error=map_error, within_noise=bool(change[g] <= noise[g]), classes=classes))
    return out
