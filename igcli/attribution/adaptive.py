"""Locally adaptive trapezoid integration along IG paths.

Completeness holds on every piece of the path: for an interval [a, b], the trapezoid's estimate
of the attributions' sum, (x - x') . (g(a) + g(b)) / 2 . (b - a), should equal F(b) - F(a), and
both sides are known from evaluations already made (a backward also returns F). Their difference
is the interval's error. Each round bisects the worst share of each path's intervals (its last
round only as many as it needs), so evaluations gather where the gradient changes (ReLU kinks,
softmax saturation) instead of being spread evenly; a path stops once its summed interval errors
are within tolerance. Ends where a softmax or sigmoid is saturated are not evaluated (PathEnds).
How it compares with fixed rules: docs/performance.md#adaptive-rule.

The bookkeeping is kept for all of a chunk's paths at once: scalars (alphas, F, slopes, errors)
in flat NumPy arrays, each point's attribution density g * (x - x') in one device tensor (what
slopes, map bounds and the attributions are all made of), and each round costs a fixed number of
array operations and one device-to-host transfer, whatever the number of paths, so that a GPU
never waits on per-path Python.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from igcli.attribution.group_sums import on_device as _on
from igcli.attribution.group_sums import rows as _rows
from igcli.attribution.group_sums import sum_rows_by_group as _sum_rows_by_group
from igcli.attribution.kinds import DEFAULT_MAP_TOLERANCE  # noqa: F401 - defined without torch
from igcli.attribution.storage import FreshStorage, MapStorage

REFINE_SHARE = 0.34  # of a path's intervals bisected per round: the worst third (measured best of 1/4..1/2)
INITIAL_INTERVALS = 4
# What bisecting an interval is expected to leave of its errors, to bisect no more of a path's
# worst intervals than it needs to stop: a smooth integrand leaves 1/4 of the trapezoid's
# completeness error (two halves of 1/8); the map bound halves where the gradient jumps once
# (1/4 squared) and falls faster where it is smooth, so 1/2 of the squared bound is the cautious end.
BISECTED_ERROR = 0.25
BISECTED_SQUARED_BOUND = 0.5
# An end of the path whose slope the score head predicts within this share of the completeness
# budget (on its half of the first interval) takes no gradient: it is zero there (see PathEnds).
FLAT_END_SHARE = 1 / 3

# (path, alpha) per point, and rows to write each point's density dF/dx * (x - x') into -> F per point
Evaluate = Callable[[np.ndarray, np.ndarray, Tensor], Tensor]


@dataclass
class PathEnds:
    """What is known of each path's ends before any gradient: F at alpha 0 and 1 ([P, 2], from the
    forwards every run makes for F(x) and F(x')), and dF/dalpha there as the score head alone
    predicts it ([P, 2], NaN where it cannot; ``backends.base.end_slopes``).

    A softmax explanation typically starts where the class has ~0 probability and ends where it has
    ~1: the head is saturated at both ends and the gradient there is ~0. An end whose predicted
    slope is that small is taken as zero instead of evaluated (see docs/performance.md#flat-ends).
    Its F is exact, so an end that is not flat after all shows as completeness error on its
    interval, and the rule bisects there."""

    scores: np.ndarray
    slopes: np.ndarray


@dataclass
class PathResults:
    """What a rule gives for each of P paths."""

    attributions: Tensor  # [P, ...]
    steps: Tensor  # intervals (adaptive) or the rule's m, [P]
    evaluations: Tensor  # gradient evaluations, [P]
    within_tolerance: Tensor  # [P] bool: the rule stopped because its error estimates met the tolerances
    map_error: Tensor  # [P] float64: estimated relative L2 error of the map; NaN where the rule has none


def integrate_locally(evaluate: Evaluate, deltas: Tensor, f_delta: Tensor, noise: Tensor, quad,
                      buffers: MapStorage | None = None, ends: PathEnds | None = None) -> PathResults:
    """Attributions [P, ...] along each path (the integral of dF/dx times x - x'), with the
    intervals and evaluations each used.

    ``quad.steps`` None: refine until the summed interval errors are within ``quad.tolerance`` of
    |F(x) - F(x')| (or ``quad.max_steps`` intervals); an integer: spend exactly that many intervals.
    With ``quad.map_tolerance`` the map is refined too: intervals are ranked by whichever of their
    two errors is the larger share of its budget, and a path stops once its completeness error
    (the signed sum, the number each record reports) is within ``tolerance`` and its estimated
    map error, sqrt(sum of squared interval bounds), within ``map_tolerance`` of ||A||, and
    the change its last round made to the map is too (two consecutive estimates agree). No path
    stops on the first, uniform round: a kink between its nodes can hide from both estimates there.
    The stored maps live in memory borrowed from ``buffers`` (None: FreshStorage, nothing kept).
    ``ends``: where known, the ends whose gradient is ~0 are not evaluated (PathEnds).
    """
    buffers = buffers or FreshStorage()
    refinement = _Refinement(deltas, f_delta, noise, quad, buffers, ends)
    try:
        path, alpha = refinement.first_points()
        densities = refinement.first_densities(len(path))
        refinement.start(evaluate(path, alpha, densities), densities)
        while True:
            chosen = refinement.worst_intervals()
            if len(chosen) == 0:
                break
            path, alpha = refinement.midpoints(chosen)
            # The densities go straight into the stored maps: no copy of a round's gradients.
            scores = evaluate(path, alpha, refinement.reserve(len(path)))
            refinement.split(chosen, scores)
        steps = refinement.intervals_per_path()
        evaluations = steps + 1 - refinement.flat.sum(1)
        return PathResults(refinement.attributions(), torch.from_numpy(steps), torch.from_numpy(evaluations),
                           torch.from_numpy(refinement.done), torch.from_numpy(refinement.relative_map_error()))
    finally:  # also when the model fails mid-chunk: the next chunk still finds the buffer
        if refinement.storage is not None:
            buffers.give_back(refinement.storage)


class _Intervals:
    """Every path's intervals [a, b], in no particular order: their path, end nodes, completeness
    error F(b) - F(a) - (s(a) + s(b)) (b - a) / 2, and (map-aware rule) the bound
    (b - a) / 2 * ||(g(b) - g(a)) * (x - x')|| on the L2 error the trapezoid makes there."""

    def __init__(self, path: np.ndarray, left: np.ndarray, right: np.ndarray):
        self.path, self.left, self.right = path, left, right
        self.error = np.zeros(len(path))
        self.bound = np.zeros(len(path))


class _Refinement:
    """The state of one chunk's adaptive integration, a round at a time."""

    def __init__(self, deltas: Tensor, f_delta: Tensor, noise: Tensor, quad, buffers: MapStorage,
                 ends: PathEnds | None = None):
        self.deltas, self.quad, self.buffers = deltas, quad, buffers
        self.count = len(deltas)
        self.budget = quad.steps if quad.steps is not None else quad.max_steps
        self.start_intervals = max(1, min(INITIAL_INTERVALS, self.budget))
        change, noise = np.abs(f_delta.cpu().numpy()), noise.cpu().numpy()
        # The budget is what records judge by (engine.completeness_met): float noise only where F
        # itself changes by no more than that. + 1e-30: a path whose F is 0 at both ends still ranks.
        self.completeness_budget = np.where(change <= noise, noise, quad.tolerance * change) + 1e-30
        self.ends = ends
        self.flat = np.zeros((self.count, 2), dtype=bool)  # ends taken as zero gradient, not evaluated
        self.first_evaluated = np.zeros(0, dtype=bool)  # which first-round nodes were evaluated (first_points)
        if ends is not None and self.start_intervals > 1:  # one interval: its ends are all the trapezoid has
            weight = 1 / (2 * self.start_intervals)  # an end's share of the first round's trapezoid
            with np.errstate(invalid="ignore"):  # NaN slopes (unknown) compare False: evaluated
                self.flat = np.abs(ends.slopes) * weight <= FLAT_END_SHARE * quad.tolerance * change[:, None]
        self.map_aware = quad.map_tolerance is not None
        self.active = np.ones(self.count, dtype=bool)
        self.done = np.zeros(self.count, dtype=bool)  # stopped with every estimate within its tolerance
        self.rounds = 0  # bisection rounds so far: every active path takes part in each
        self.last_change = np.full(self.count, np.inf)  # ||change of the map|| in a path's last round (map-aware)
        self.norms = np.zeros(self.count)  # ||A|| per path from the running trapezoid (map-aware only)
        self.alpha = np.zeros(0)
        self.node_path = np.zeros(0, dtype=np.int64)  # each node's path
        self.score = np.zeros(0)
        self.slope = np.zeros(0)
        self.storage: Tensor | None = None  # the flat buffer borrowed for the stored maps
        self.density: Tensor | None = None  # g * (x - x') per node, [capacity, ...], a view of storage
        self.nodes = 0
        self.running: Tensor | None = None  # the attributions' running trapezoid (map-aware only)

    def first_points(self) -> tuple[np.ndarray, np.ndarray]:
        """The first round's points to evaluate: every path's nodes k / start but its flat ends."""
        path, alpha = self._first_nodes()
        evaluated = np.ones((self.count, self.start_intervals + 1), dtype=bool)
        evaluated[:, 0], evaluated[:, -1] = ~self.flat[:, 0], ~self.flat[:, 1]
        self.first_evaluated = evaluated.ravel()
        return path[self.first_evaluated], alpha[self.first_evaluated]

    def _first_nodes(self) -> tuple[np.ndarray, np.ndarray]:
        start = self.start_intervals
        return np.repeat(np.arange(self.count), start + 1), np.tile(np.arange(start + 1) / start, self.count)

    def first_densities(self, evaluated: int) -> Tensor:
        """Rows for the densities of the first round's ``evaluated`` points: the stored maps'
        where no end is flat, else a scratch tensor that ``start`` places among the zero rows of
        the flat ends."""
        if not self.flat.any():
            return self.reserve(evaluated)
        return self.deltas.new_empty((evaluated,) + tuple(self.deltas.shape[1:]))

    def start(self, scores: Tensor, densities: Tensor) -> None:
        """Take the first, uniform round (``first_points``, evaluated, densities written into
        ``first_densities``): every path's nodes k / start and the intervals between; a flat end
        is a node with its known F and a zero gradient."""
        start, count = self.start_intervals, self.count
        path, alpha = self._first_nodes()
        if self.flat.any():
            rows = torch.from_numpy(np.flatnonzero(self.first_evaluated)).to(densities.device)
            self.reserve(len(path)).zero_().index_copy_(0, rows, densities)
            known = np.zeros((count, start + 1))
            assert self.ends is not None  # flat ends come from known ends only
            known[:, 0], known[:, -1] = self.ends.scores[:, 0], self.ends.scores[:, 1]
            known = torch.from_numpy(known.ravel()).to(scores)
            scores = known.index_copy_(0, rows, scores)
        ids = self._add_nodes(path, alpha)
        per_path = ids.reshape(count, start + 1)  # flatten() copies: left and right must not share memory
        self.intervals = _Intervals(np.repeat(np.arange(count), start), per_path[:, :-1].flatten(),
                                    per_path[:, 1:].flatten())
        fresh = np.arange(len(self.intervals.path))
        bounds = None
        if self.map_aware:
            self.running = self._trapezoid(self.intervals)
            # The nodes are each path's start + 1 in a row, so every jump is a difference of neighbours.
            jumps = self._maps()[: self.nodes].view(count, start + 1, -1).diff(dim=1)
            bounds = jumps.norm(dim=2).flatten() / (2 * start)
        self._update(fresh, scores, len(ids), np.arange(count), bounds)

    def worst_intervals(self) -> np.ndarray:
        """Indices of the intervals to bisect this round (none once every path has stopped), in
        path order and, within a path, worst first; paths that are done stop here."""
        iv, count = self.intervals, self.count
        intervals = np.bincount(iv.path, minlength=count)
        budget = self.completeness_budget
        if self.map_aware:
            map_budget = self.quad.map_tolerance * self.norms + 1e-30
            completeness = np.abs(np.bincount(iv.path, iv.error, minlength=count))
            map_error = np.sqrt(np.bincount(iv.path, iv.bound * iv.bound, minlength=count))
            done = (completeness <= budget) & (map_error <= map_budget) & (self.last_change <= map_budget)
            failed = ~np.isfinite(completeness + map_error)
            rank_by = np.maximum(np.abs(iv.error) / budget[iv.path], iv.bound / map_budget[iv.path])
        else:
            total = np.bincount(iv.path, np.abs(iv.error), minlength=count)
            done, failed = total <= budget, ~np.isfinite(total)
            rank_by = np.abs(iv.error)
        # A NaN or infinite gradient or F: no refinement will mend it, and its record is a failure.
        self.active &= ~failed
        if self.quad.steps is None:
            done &= self.rounds >= 1  # never on the first round (see integrate_locally)
            self.done |= self.active & done
            self.active &= ~done
        self.active &= intervals < self.budget
        share = np.minimum(np.maximum(1, np.ceil(REFINE_SHARE * intervals)), self.budget - intervals)
        candidates = np.flatnonzero(self.active[iv.path])
        # Path, then worst first, then lower alpha first: the order requests go to the model in.
        keys = (self.alpha[iv.left[candidates]], -rank_by[candidates], iv.path[candidates])  # last key first
        order = candidates[np.lexsort(keys)]
        paths = iv.path[order]
        first = np.searchsorted(paths, paths)
        rank = np.arange(len(order)) - first
        if self.quad.steps is None:
            # A round bisects a share of each path's intervals at once, to keep rounds few; in a
            # path's last round, fewer may do (see docs/performance.md#adaptive-rule).
            share = np.minimum(share, self._fewest_enough(order, first, rank, map_budget if self.map_aware else None))
        return order[rank < share[paths]]

    def _fewest_enough(self, order: np.ndarray, first: np.ndarray, rank: np.ndarray,
                       map_budget: np.ndarray | None) -> np.ndarray:
        """Per path, the fewest of its worst intervals (``order``: by path, worst first; ``first``:
        where each one's path starts in it; ``rank``: its place in its path) whose bisection is
        expected (BISECTED_ERROR, BISECTED_SQUARED_BOUND) to bring the path within its budgets;
        no limit where none would."""
        iv, count, paths = self.intervals, self.count, self.intervals.path[order]

        def within_path_sums(values: np.ndarray) -> np.ndarray:
            running = np.cumsum(values)
            return running - running[first] + values[first]

        if map_budget is None:
            errors = np.abs(iv.error[order])
            left = np.bincount(iv.path, np.abs(iv.error), minlength=count)[paths] - (1 - BISECTED_ERROR) * within_path_sums(errors)
            enough = left <= self.completeness_budget[paths]
        else:
            squared = iv.bound[order] ** 2
            map_left = (np.bincount(iv.path, iv.bound ** 2, minlength=count)[paths]
                        - (1 - BISECTED_SQUARED_BOUND) * within_path_sums(squared))
            completeness_left = np.abs(np.bincount(iv.path, iv.error, minlength=count)[paths]
                                       - (1 - BISECTED_ERROR) * within_path_sums(iv.error[order]))
            enough = (completeness_left <= self.completeness_budget[paths]) & (map_left <= map_budget[paths] ** 2)
        fewest = np.full(count, np.iinfo(np.int64).max)
        np.minimum.at(fewest, paths[enough], rank[enough] + 1)
        return fewest

    def midpoints(self, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        iv = self.intervals
        return iv.path[chosen], (self.alpha[iv.left[chosen]] + self.alpha[iv.right[chosen]]) / 2

    def split(self, chosen: np.ndarray, scores: Tensor) -> None:
        """Bisect the ``chosen`` intervals at their midpoints, just evaluated (their densities in
        the rows ``reserve`` gave)."""
        iv = self.intervals
        path, alpha = self.midpoints(chosen)
        middle = self._add_nodes(path, alpha)
        bounds = self._bisect_map(chosen, middle) if self.map_aware else None
        right = iv.right[chosen]
        iv.right[chosen] = middle  # the left half keeps the interval's place, the right half is added
        first_new = len(iv.path)
        iv.path = np.concatenate([iv.path, path])
        iv.left = np.concatenate([iv.left, middle])
        iv.right = np.concatenate([iv.right, right])
        iv.error = np.concatenate([iv.error, np.zeros(len(path))])
        iv.bound = np.concatenate([iv.bound, np.zeros(len(path))])
        fresh = np.concatenate([chosen, np.arange(first_new, len(iv.path))])
        self.rounds += 1
        self._update(fresh, scores, len(middle), np.unique(path), bounds)

    def relative_map_error(self) -> np.ndarray:
        """Per path, the estimated L2 error of its map over ||A||, sqrt(sum of squared interval
        bounds) / ||A||; NaN unless map-aware."""
        if not self.map_aware:
            return np.full(self.count, np.nan)
        iv = self.intervals
        estimate = np.sqrt(np.bincount(iv.path, iv.bound * iv.bound, minlength=self.count))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(estimate == 0, 0.0, estimate / self.norms)

    def intervals_per_path(self) -> np.ndarray:
        return np.bincount(self.intervals.path, minlength=self.count)

    def attributions(self) -> Tensor:
        """The trapezoid over each path's (non-uniform) nodes: the map-aware rule's running one
        (each bisection added its change to it), else summed from the stored densities."""
        if self.running is not None:
            return self.running.to(self.deltas.dtype)
        return self._trapezoid(self.intervals).to(self.deltas.dtype)

    def _trapezoid(self, iv: _Intervals) -> Tensor:
        # A node weighs half of each interval it ends.
        half = (self.alpha[iv.right] - self.alpha[iv.left]) / 2
        weight = np.bincount(iv.left, half, minlength=self.nodes) + np.bincount(iv.right, half, minlength=self.nodes)
        return _sum_rows_by_group(self._maps()[: self.nodes], self.node_path, self.count, weight)

    def reserve(self, count: int) -> Tensor:
        """The stored maps' rows for the next ``count`` nodes, [count, ...]; ``_add_nodes`` takes them."""
        like = self.deltas
        if self.density is None or self.nodes + count > len(self.density):
            row = max(1, like[0].numel())
            capacity = self.buffers.rows_for(self.nodes + count, self.nodes, max(1, like[0].numel() * like.element_size()),
                                             self.count * (self.budget + 1), like.device.type == "cpu")
            storage = self.buffers.borrow(capacity * row, like)
            grown = storage[: len(storage) // row * row].view((-1,) + tuple(like.shape[1:]))  # whole rows
            if self.density is not None:
                grown[: self.nodes] = self.density[: self.nodes]  # the smaller buffer is dropped
            self.storage, self.density = storage, grown
        return self.density[self.nodes : self.nodes + count]

    def _add_nodes(self, path: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """Take the nodes (path, alpha) whose densities fill the rows ``reserve`` gave last."""
        ids = np.arange(self.nodes, self.nodes + len(path))
        self.nodes += len(ids)
        self.alpha = np.concatenate([self.alpha, alpha])
        self.node_path = np.concatenate([self.node_path, path])
        return ids

    def _update(self, fresh: np.ndarray, scores: Tensor, new_nodes: int, refining: np.ndarray,
                bounds: Tensor | None) -> None:
        """Fill the errors (and ``bounds``, map-aware) of the ``fresh`` intervals and the norms of
        the ``refining`` paths, with one transfer from the device for all of them."""
        iv = self.intervals
        # Slopes summed in float32 (or the densities' wider type): a float64 sum converts every
        # element, for sums no further from exact than the float32 densities they add up.
        density = self._maps()
        wide = torch.promote_types(density.dtype, torch.float32)
        parts = [scores, density[self.nodes - new_nodes : self.nodes].flatten(1).sum(1, dtype=wide)]
        if self.map_aware:
            parts += [bounds, self._norms(refining)]
        host = torch.cat([part.to(wide) for part in parts]).double().cpu().numpy()
        self.score = np.concatenate([self.score, host[:new_nodes]])
        self.slope = np.concatenate([self.slope, host[new_nodes : 2 * new_nodes]])
        left, right = iv.left[fresh], iv.right[fresh]
        width = self.alpha[right] - self.alpha[left]
        iv.error[fresh] = self.score[right] - self.score[left] - (self.slope[left] + self.slope[right]) * width / 2
        if self.map_aware:
            fills = 2 * new_nodes + len(fresh)
            iv.bound[fresh] = host[2 * new_nodes : fills]
            if len(host) > fills + len(refining):  # a bisection round: the map's change per refined path too
                self.last_change[refining] = host[fills : fills + len(refining)]
                fills += len(refining)
            self.norms[refining] = host[fills:]

    def _norms(self, paths: np.ndarray) -> Tensor:
        return _rows(self._running(), paths).flatten(1).norm(dim=1)

    def _maps(self) -> Tensor:
        """The stored densities, once ``reserve`` has made room for them."""
        assert self.density is not None, "reserve() comes first"
        return self.density

    def _running(self) -> Tensor:
        """The map-aware rule's running trapezoid, which ``start`` begins."""
        assert self.running is not None, "start() comes first"
        return self.running

    def _bisect_map(self, chosen: np.ndarray, middle: np.ndarray) -> Tensor:
        """Bisecting [a, b] at m (nodes ``middle``, just added): add (b - a)/4 (2 d(m) - d(a) - d(b))
        to the running trapezoid, d the density at a node; return the error bounds of every [a, m],
        then of every [m, b], as ``_Intervals`` defines them."""
        iv, density = self.intervals, self._maps()
        left, right = iv.left[chosen], iv.right[chosen]
        quarter = _on(density, (self.alpha[right] - self.alpha[left]) / 4).to(density.dtype)
        d_m = density[middle[0] : middle[-1] + 1]
        # Both ends' densities in one gather, turned in place into d(m) - d(a) and d(m) - d(b).
        jumps = _rows(density, np.concatenate([left, right])).view((2,) + tuple(d_m.shape))
        torch.sub(d_m, jumps, out=jumps)
        bounds = jumps.flatten(2).norm(dim=2).mul_(quarter).flatten()
        # 2 d(m) - d(a) - d(b) is the sum of the two jumps: no more passes over the maps.
        change = jumps[0].add_(jumps[1]).mul_(quarter.view((-1,) + (1,) * (density.dim() - 1)))
        paths, slot = np.unique(iv.path[chosen], return_inverse=True)
        per_path = _sum_rows_by_group(change, slot.ravel(), len(paths))
        running = self._running()
        running.index_add_(0, _on(running, paths), per_path)
        return torch.cat([bounds, per_path.flatten(1).norm(dim=1)])
