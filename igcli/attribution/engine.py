"""Integrated Gradients along the straight line from baselines to inputs.

Knows tensors and a Backend, nothing else: no files, no configs, no CLI. Gradient evaluations are
batched across inputs, baselines and path points together, as a ``Batching`` policy cuts them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
import torch
from torch import Tensor

from igcli.attribution.adaptive import DEFAULT_MAP_TOLERANCE, PathEnds, PathResults, integrate_locally
from igcli.attribution.quadrature import DEFAULT_RULE, Rule, nodes, refine
from igcli.attribution.storage import MapStorage
from igcli.backends.base import Backend, Batching, ScoreKind, end_slopes


@dataclass(frozen=True)
class Quadrature:
    """How to integrate: a rule and either fixed ``steps`` or adaptive refinement."""

    rule: Rule = DEFAULT_RULE
    steps: int | None = None  # None: start at min_steps, refine until `tolerance` or max_steps
    tolerance: float = 0.01  # relative completeness error that counts as converged
    min_steps: int = 8
    max_steps: int = 512
    map_tolerance: float | None = DEFAULT_MAP_TOLERANCE  # adaptive: estimated relative L2 map error; None: completeness only


@dataclass
class FixedBatches:
    """The plain Batching: ``points`` per call, unpadded, as the backend answers."""

    points: int

    def padded(self, rows: int) -> int:
        return rows

    def scores(self, backend: Backend, x: Tensor) -> Tensor:
        return torch.cat([backend.scores(x[start : start + self.points]) for start in range(0, len(x), self.points)])

    def scores_and_grads(self, backend: Backend, x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        return backend.scores_and_grads(x, weights)


@dataclass(frozen=True)
class TargetSpec:
    """Which output to explain: a class ``index``, the ``predicted`` class, the ``top_k``, every
    class ``above`` a ``threshold`` of F (multi-label), or ``own_column``: input n's column n (a
    backend whose columns are per-input quantities, such as region sums: backends/region.py)."""

    kind: Literal["index", "predicted", "top_k", "above", "own_column"]
    value: int = 1
    threshold: float = 0.0

    @property
    def ranked(self) -> bool:
        """Several targets per input, named by their rank among F(x)."""
        return self.kind in ("top_k", "above")


@dataclass
class Explanation:
    """IG for one (input, target), averaged over that input's baselines."""

    input_index: int
    target: int
    rank: int | None  # 1-based rank of the target among F(x), for top_k
    attributions: Tensor  # shaped like the input, on the CPU
    f_input: float
    f_baseline: float  # mean over baselines
    attribution_sum: float
    abs_error: float  # |sum(attributions) - (F(x) - F(x'))|
    rel_error: float | None  # abs_error / |F(x) - F(x')|; None when that difference is 0
    steps: int  # the rule's m, the largest over baselines
    gradient_evals: int  # over all baselines and refinements
    # rel_error <= tolerance (abs_error within float noise where |F(x) - F(x')| is itself at noise
    # level: ``within_noise``), the map estimate within map_tolerance, and no path at max_steps
    converged: bool
    stopped_by: str = "tolerance"  # tolerance | max_steps | fixed_steps
    map_error: float | None = None  # estimated relative L2 map error, the largest over baselines; None: no estimate
    within_noise: bool = False  # completeness judged against float noise, as |F(x) - F(x')| is no larger
    # The target's probability at the baseline (mean over baselines): F(x') for softmax and sigmoid
    # scores, the softmax of the baseline's logits for logits; and the classes it is one of.
    baseline_probability: float = float("nan")
    classes: int = 0


def resolve_targets(scores: Tensor, spec: TargetSpec) -> list[list[int]]:
    """Target classes per input from F(x) [N, classes]."""
    if spec.kind == "index":
        return [[spec.value] for _ in range(len(scores))]
    if spec.kind == "own_column":
        return [[n] for n in range(len(scores))]
    if spec.kind == "above":
        # Highest first; where no class is over the threshold, the top one (the job says so).
        order = scores.argsort(dim=1, descending=True, stable=True).tolist()
        over = (scores.double() > spec.threshold).tolist()  # as records compare F(x), in float64
        return [[c for c in row if over[n][c]] or row[:1] for n, row in enumerate(order)]
    k = 1 if spec.kind == "predicted" else min(spec.value, scores.shape[1])
    return scores.topk(k, dim=1).indices.tolist()


@dataclass
class _Paths:
    """One straight path per (input, target, baseline); tensors indexed by path."""

    input_index: Tensor
    baseline_row: Tensor
    target: Tensor
    f_input: Tensor  # float64
    f_baseline: Tensor  # float64
    noise: Tensor  # completeness errors below this are rounding, not quadrature
    end_slopes: Tensor  # [P, 2] float64: dF/dalpha at alpha 0 and 1 as the score head predicts it
    baseline_probability: Tensor  # float64: Explanation.baseline_probability per path


def attribute(
    backend: Backend,
    inputs: Tensor,
    baselines: Tensor,
    target: TargetSpec,
    quadrature: Quadrature,
    batch_size: int | Batching = 256,
    map_buffers: MapStorage | None = None,
    targets: list[list[int]] | None = None,
) -> list[Explanation]:
    """Explain ``inputs`` [N, ...] against ``baselines`` [N, K, ...] (K baselines per input).
    ``batch_size``: points per backend call, or the Batching policy that cuts them
    (backends/batching.BatchSize pads to a few shapes and halves on out-of-memory).
    ``map_buffers``: where the adaptive rule keeps its maps from one call to the next (a run's calls share one).
    ``targets``: the classes per input, where the caller has resolved them (else from F(inputs) and ``target``).

    Returns one Explanation per (input, target), in input order, then target rank order.
    """
    batch = FixedBatches(batch_size) if isinstance(batch_size, int) else batch_size
    inputs = inputs.to(backend.device, backend.dtype)
    flat_baselines = baselines.to(backend.device, backend.dtype).flatten(0, 1)
    # One baseline for every input (black, zeros, a constant, a file): F(x') is the same for all
    # paths, and is computed once.
    common_start = bool((flat_baselines == flat_baselines[:1]).all())
    ends = flat_baselines[:1] if common_start else flat_baselines
    # One pass for both ends: on a GPU a second small forward costs as much as a large one.
    f_ends = batch.scores(backend, torch.cat([inputs, ends]))
    f_inputs, f_baselines = f_ends[: len(inputs)], f_ends[len(inputs):].expand(len(flat_baselines), -1)
    targets = resolve_targets(f_inputs, target) if targets is None else targets
    paths, groups = _make_paths(targets, baselines.shape[1], f_inputs, f_baselines, target.ranked,
                                backend.score_kind)
    path_integral = _PathIntegral(backend, inputs, flat_baselines, paths, f_inputs.shape[1], batch, common_start,
                                  map_buffers)
    return _combine(groups, paths, path_integral.run(quadrature), quadrature, f_inputs.shape[1])


def start_offset(dtype: torch.dtype) -> float:
    """Where every rule takes its gradient for alpha 0: the path's limit as alpha falls to 0, not
    the gradient at the baseline itself. At a constant baseline such as black every max pool ties,
    and the gradient there sides with no point of the path (see docs/performance.md#start-offset).
    sqrt(machine epsilon), the usual one-sided step: far enough for every input element that
    differs from the baseline to move, close enough that a ReLU kink in between is rare."""
    return float(torch.finfo(dtype).eps) ** 0.5


def _off_start(alpha: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """``alpha`` with every 0 moved to ``start_offset``."""
    return np.where(alpha == 0, start_offset(dtype), alpha)


def _make_paths(targets: list[list[int]], samples: int, f_inputs: Tensor, f_baselines: Tensor, ranked: bool,
                score_kind: ScoreKind):
    rows: list[tuple[int, int, int]] = []
    groups: list[tuple[int, int, int | None]] = []  # (input, target, rank); its paths: `samples` consecutive rows
    for n, classes in enumerate(targets):
        for rank, cls in enumerate(classes, start=1):
            groups.append((n, cls, rank if ranked else None))
            rows.extend((n, n * samples + k, cls) for k in range(samples))
    n, b, t = torch.tensor(rows, dtype=torch.long, device=f_inputs.device).view(-1, 3).unbind(1)
    f_input, f_baseline = f_inputs[n, t].double(), f_baselines[b, t].double()
    noise = 64 * torch.finfo(f_inputs.dtype).eps * (f_input.abs() + f_baseline.abs())
    slopes = end_slopes(score_kind, f_baselines[b], f_inputs[n], t)
    probability = f_baseline if score_kind is not ScoreKind.logits else \
        torch.softmax(f_baselines[b].double(), dim=1).gather(1, t[:, None]).squeeze(1)
    return _Paths(n, b, t, f_input, f_baseline, noise, slopes, probability), groups


class _PathIntegral:
    """The running integral of the target's gradient along each path."""

    def __init__(self, backend: Backend, inputs: Tensor, baselines: Tensor, paths: _Paths, classes: int,
                 batch: Batching, common_start: bool = False, map_buffers: MapStorage | None = None):
        self.backend, self.paths, self.classes, self.batch = backend, paths, classes, batch
        self.map_buffers = map_buffers
        # A common start stays one row, broadcast, rather than a copy per path.
        self.starts = baselines[:1] if common_start else baselines[paths.baseline_row]
        self.deltas = inputs[paths.input_index] - self.starts
        self.integral: Tensor | None = None  # fixed rules' running sum of weighted gradients
        self.common_start = common_start  # every path starts at the same point

    def run(self, quad: Quadrature) -> PathResults:
        """Integrate every path."""
        if quad.rule is Rule.adaptive:
            paths = self.paths
            ends = PathEnds(torch.stack([paths.f_baseline, paths.f_input], dim=1).cpu().numpy(),
                            paths.end_slopes.cpu().numpy())
            return integrate_locally(self.evaluate, self.deltas, paths.f_input - paths.f_baseline, paths.noise, quad,
                                     self.map_buffers, ends)
        self.integral = torch.zeros_like(self.deltas)
        count = len(self.paths.target)
        steps = torch.zeros(count, dtype=torch.long)
        evals = torch.zeros(count, dtype=torch.long)
        active = torch.arange(count, device=self.integral.device)
        m = quad.steps if quad.steps is not None else min(quad.min_steps, quad.max_steps)
        level = nodes(quad.rule, m)
        no_estimate = torch.full((count,), float("nan"), dtype=torch.float64)
        while True:
            self.accumulate(active, level.alphas, level.weights)
            evals[active.cpu()] += len(level.alphas)
            steps[active.cpu()] = m
            if quad.steps is not None:
                return PathResults(self.attributions(), steps, evals, torch.zeros(count, dtype=torch.bool), no_estimate)
            converged = _converged(self.attribution_sums(), self.paths, quad.tolerance)
            active = active[~converged[active]]
            refinement = refine(quad.rule, m)
            if len(active) == 0 or refinement.steps > quad.max_steps:
                return PathResults(self.attributions(), steps, evals, converged.cpu(), no_estimate)
            self.integral[active] *= refinement.keep
            level, m = refinement.new, refinement.steps

    def accumulate(self, active: Tensor, alphas, weights) -> None:
        """integral[p] += sum_j weights[j] * dF_target(x'_p + alphas[j] (x_p - x'_p)) / dx."""
        like = self._integral()
        alphas = torch.tensor(_off_start(np.asarray(alphas), like.dtype), dtype=like.dtype, device=like.device)
        weights = torch.tensor(weights, dtype=like.dtype, device=like.device)
        n = len(alphas)
        path = active.repeat_interleave(n)
        point_weights = weights.repeat(len(active))
        broadcast = (-1,) + (1,) * (like.dim() - 1)
        for batch, _, grads, _ in self.evaluate_batches(path, alphas.repeat(len(active)), self._targets(path)):
            # Point i is node i % n of path slot i // n. The batch's rows, laid out as [slots, n]
            # and summed over the nodes, add once to each path: a scatter-add (index_add_) would
            # add in whatever order CUDA's atomics land, and runs would differ in the last bits.
            first, last = batch.start // n, (batch.stop - 1) // n
            rows = like.new_zeros(((last - first + 1) * n,) + like.shape[1:])
            placed = slice(batch.start - first * n, batch.stop - first * n)
            torch.mul(grads, point_weights[batch].view(broadcast), out=rows[placed])
            like.index_add_(0, active[first : last + 1], rows.view((-1, n) + like.shape[1:]).sum(1))

    def _targets(self, path: Tensor) -> Tensor:
        """The target class of each point's path, [points, 1]."""
        return self.paths.target.index_select(0, path).unsqueeze(1)

    def evaluate_batches(self, path: Tensor, alpha: Tensor,
                         targets: Tensor) -> Iterator[tuple[slice, Tensor, Tensor, Tensor]]:
        """For points (path[i], alpha[i]) of target class targets[i], ``batch_size`` at a time:
        (slice, F of every class, dF_target/dx, x - x' of each point's path). No alpha is 0: the
        callers take alpha 0 at ``start_offset``."""
        like = self.deltas
        broadcast = (-1,) + (1,) * (like.dim() - 1)
        alpha = alpha.to(like.dtype)
        # One buffer of points for all the batches (each batch's a view of it). Selectors stay per
        # batch: one for a whole round of a fixed rule grows with its points times the classes.
        buffer = like.new_empty((self.batch.padded(min(len(path), self.batch.points)),) + like.shape[1:])
        start = 0
        while start < len(path):
            batch = slice(start, min(start + self.batch.points, len(path)))
            start = batch.stop
            p, count = path[batch], batch.stop - batch.start
            size = self.batch.padded(count)  # the batch may have been lowered meanwhile
            points = buffer[:size]
            # index_select, not [p]: advanced indexing of whole inputs is far slower on the CPU.
            deltas = self.deltas.index_select(0, p)
            starts = self.starts if self.common_start else self.starts.index_select(0, p)
            torch.addcmul(starts, alpha[batch].view(broadcast), deltas, out=points[:count])
            if size > count:
                points[count:] = points[0]
            # Padding rows (copies of the first point) have zero weight: they add nothing to the
            # gradients, and their outputs are cut off.
            selector = like.new_zeros((size, self.classes))
            selector[:count].scatter_(1, targets[batch], 1.0)
            scores, grads = self.batch.scores_and_grads(self.backend, points, selector)
            yield batch, scores[:count], grads[:count], deltas

    def evaluate(self, path: np.ndarray, alpha: np.ndarray, densities: Tensor) -> Tensor:
        """F_target at every point (path[i], alpha[i]), for the adaptive rule, and its attribution
        density dF_target/dx * (x - x') written into ``densities[i]``. At alpha 0, F is F(x')
        itself (F is continuous), not F where the gradient was taken (``start_offset``): the rule
        compares F across each interval with the trapezoid, and an offset's worth of F would read
        as error."""
        device = self.deltas.device
        path_on = torch.from_numpy(path).to(device)
        targets = self._targets(path_on)
        parts = []
        for batch, scores, grads, deltas in self.evaluate_batches(
                path_on, torch.from_numpy(_off_start(alpha, self.deltas.dtype)).to(device), targets):
            torch.mul(grads, deltas, out=densities[batch])
            parts.append(scores)
        scores = (parts[0] if len(parts) == 1 else torch.cat(parts)).gather(1, targets).squeeze(1)
        at_start = alpha == 0
        if at_start.any():
            f_baseline = self.paths.f_baseline.index_select(0, torch.from_numpy(path[at_start]).to(device))
            starts = torch.from_numpy(np.flatnonzero(at_start)).to(device)
            scores = scores.index_copy(0, starts, f_baseline.to(scores.dtype))
        return scores

    def _integral(self) -> Tensor:
        """The fixed rules' running sum, which ``run`` starts."""
        assert self.integral is not None, "a fixed rule's integral starts in run()"
        return self.integral

    def attributions(self) -> Tensor:
        return self.deltas * self._integral()

    def attribution_sums(self) -> Tensor:
        return (self.deltas.double() * self._integral().double()).flatten(1).sum(1)


def _converged(sums: Tensor, paths: _Paths, tolerance: float) -> Tensor:
    """Per path, completeness_met for these attribution sums."""
    return completeness_met((sums - (paths.f_input - paths.f_baseline)).abs(),
                            (paths.f_input - paths.f_baseline).abs(), paths.noise, tolerance)


def completeness_met(abs_error: Tensor, change: Tensor, noise: Tensor, tolerance: float) -> Tensor:
    """abs_error <= tolerance * change, i.e. rel_error <= tolerance as records print it; where the
    change |F(x) - F(x')| is itself within float ``noise``, abs_error <= noise instead."""
    return torch.where(change <= noise, abs_error <= noise, abs_error <= tolerance * change)


def _combine(groups, paths: _Paths, results: PathResults, quad: Quadrature, classes: int) -> list[Explanation]:
    """One Explanation per group: its paths (one per baseline, consecutive) averaged, for all
    groups at once; the scalars cross from the device in one transfer."""
    attributions = results.attributions
    samples = len(attributions) // len(groups)
    per_group = (len(groups), samples)
    mean_attr = attributions.view(per_group + tuple(attributions.shape[1:])).mean(1)
    f_input = paths.f_input.view(per_group)[:, 0]
    f_baseline = paths.f_baseline.view(per_group).mean(1)
    total = mean_attr.double().flatten(1).sum(1)
    change, noise = (f_input - f_baseline).abs(), paths.noise.view(per_group).max(1).values
    abs_error = (total - (f_input - f_baseline)).abs()
    met = completeness_met(abs_error, change, noise, quad.tolerance)
    columns = torch.stack([f_input, f_baseline, total, abs_error, change, met.double(), (change <= noise).double(),
                           paths.baseline_probability.view(per_group).mean(1)]).cpu().tolist()
    maps = mean_attr.detach().cpu()
    steps_max, evals_sum = results.steps.view(per_group).max(1).values.tolist(), results.evaluations.view(per_group).sum(1).tolist()
    # Any baseline's path short of its tolerances (at the cap) holds the group back; NaN: no estimate.
    stopped = results.within_tolerance.view(per_group).all(1).tolist()
    map_errors = results.map_error.view(per_group).max(1).values.tolist()
    explanations = []
    for g, ((n, cls, rank), f_in, f_base, summed, error, delta, completeness_ok, noisy, probability) in enumerate(
            zip(groups, *columns)):
        map_error = None if math.isnan(map_errors[g]) else map_errors[g]
        stopped_by = "fixed_steps" if quad.steps is not None else "tolerance" if stopped[g] else "max_steps"
        map_ok = map_error is None or quad.map_tolerance is None or map_error <= quad.map_tolerance
        explanations.append(Explanation(
            input_index=n, target=cls, rank=rank, attributions=maps[g],
            f_input=f_in, f_baseline=f_base, attribution_sum=summed, abs_error=error,
            rel_error=error / delta if delta > 0 else None,
            steps=int(steps_max[g]), gradient_evals=int(evals_sum[g]),
            converged=bool(completeness_ok) and map_ok and stopped_by != "max_steps",
            stopped_by=stopped_by, map_error=map_error, within_noise=bool(noisy),
            baseline_probability=probability, classes=classes,
        ))
    return explanations
