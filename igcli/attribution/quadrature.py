"""Quadrature rules on [0, 1] for the path integral of Integrated Gradients.

Every rule is an (alphas, weights) table whose weights sum to exactly 1, so a constant gradient
is integrated without bias. (captum's ``riemann_trapezoid`` spaces n points by 1/(n-1) but weights
them by 1/n; its weights sum to (n-1)/n. Ours does not copy that.)
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from igcli.attribution.kinds import DEFAULT_RULE, Rule  # noqa: F401 - defined without numpy, named here too


@dataclass(frozen=True)
class Nodes:
    """Points on the path and their weights; ``steps`` is the rule's m."""

    alphas: np.ndarray
    weights: np.ndarray
    steps: int


@functools.lru_cache(maxsize=64)
def nodes(rule: Rule, steps: int) -> Nodes:
    """The rule's alphas and weights (float64, read-only) for m = ``steps``.

    Riemann rules use m points with weight 1/m; the trapezoid uses m intervals, so m + 1 points
    with the two endpoints weighted 1/(2m); Gauss-Legendre uses m nodes mapped from [-1, 1].
    Cached: the engine asks once per call, a text job calls it once per group of same-length
    documents (often a single one), and Gauss-Legendre's eigenvalue solve costs ~0.4 ms.
    """
    table = _table(Rule(rule), steps)
    table.alphas.setflags(write=False)
    table.weights.setflags(write=False)
    return table


def _table(rule: Rule, steps: int) -> Nodes:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    k = np.arange(steps, dtype=np.float64)
    uniform = np.full(steps, 1.0 / steps)
    if rule is Rule.riemann_left:
        return Nodes(k / steps, uniform, steps)
    if rule is Rule.riemann_right:
        return Nodes((k + 1) / steps, uniform, steps)
    if rule is Rule.riemann_middle:
        return Nodes((k + 0.5) / steps, uniform, steps)
    if rule in (Rule.riemann_trapezoid, Rule.adaptive):
        alphas = np.arange(steps + 1, dtype=np.float64) / steps
        weights = np.full(steps + 1, 1.0 / steps)
        weights[[0, -1]] = 0.5 / steps
        return Nodes(alphas, weights, steps)
    x, w = np.polynomial.legendre.leggauss(steps)
    return Nodes(0.5 * (x + 1.0), 0.5 * w, steps)


@dataclass(frozen=True)
class Refinement:
    """How to go from m to a finer m without throwing away gradients already computed.

    The finer estimate is ``keep * old_sum + sum(new_weights * g(new_alphas))``. When the rule's
    nodes do not nest (Gauss-Legendre), ``keep`` is 0 and every node of the finer rule is new.
    """

    steps: int
    keep: float
    new: Nodes


REFINE_FACTOR = {Rule.riemann_middle: 3}  # midpoints nest under tripling; the others under doubling


def refine(rule: Rule, steps: int) -> Refinement:
    """The next, finer rule after ``steps``, expressed as a reuse of the coarse sum."""
    rule = Rule(rule)
    finer_steps = steps * REFINE_FACTOR.get(rule, 2)
    coarse, fine = nodes(rule, steps), nodes(rule, finer_steps)
    # Match coarse nodes inside the fine ones; they nest when each is found and the fine weights
    # on them are the coarse weights times one common factor.
    index = np.searchsorted(fine.alphas, coarse.alphas)
    index = np.clip(index, 0, len(fine.alphas) - 1)
    nested = np.allclose(fine.alphas[index], coarse.alphas, rtol=0, atol=1e-12)
    if nested:
        ratio = fine.weights[index] / coarse.weights
        nested = np.allclose(ratio, ratio[0], rtol=1e-12, atol=0)
    if not nested:
        return Refinement(finer_steps, 0.0, fine)
    is_new = np.ones(len(fine.alphas), dtype=bool)
    is_new[index] = False
    new = Nodes(fine.alphas[is_new], fine.weights[is_new], finer_steps)
    return Refinement(finer_steps, float(ratio[0]), new)
