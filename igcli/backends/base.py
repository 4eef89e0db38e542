"""The one interface between the engine and any model runtime."""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from igcli.backends.kinds import Precision, ScoreKind  # noqa: F401 - defined without torch, named here too


def apply_score(kind: ScoreKind, outputs: Tensor) -> Tensor:
    """Turn raw model outputs [B, classes] into F as configured."""
    if kind is ScoreKind.softmax:
        return torch.softmax(outputs, dim=-1)
    if kind is ScoreKind.sigmoid:
        return torch.sigmoid(outputs)
    return outputs


def end_slopes(kind: ScoreKind, start_scores: Tensor, end_scores: Tensor, target: Tensor) -> Tensor:
    """dF/dalpha at both ends of each path [P, 2] (alpha 0, alpha 1), as the score head alone
    predicts it: its own derivative at each end, times the change of the model's outputs along
    the whole path. ``start_scores``, ``end_scores``: F for every class at x' and x, [P, classes].

    Where the head saturates (a softmax or sigmoid near 0 or 1) its derivative, and with it the
    gradient there, is ~0 whatever the network below does; that is what this detects. The outputs
    are read back from the scores, up to a shift per point that the softmax's derivative ignores.
    NaN for raw logits: their slope says nothing without a gradient."""
    p0, p1 = start_scores.double(), end_scores.double()
    column = target.view(-1, 1)
    if kind is ScoreKind.softmax:
        tiny = torch.finfo(torch.float64).tiny
        change = p1.clamp_min(tiny).log() - p0.clamp_min(tiny).log()
        onehot = torch.zeros_like(p0).scatter_(1, column, 1.0)
        # d softmax_t / d outputs = p_t (e_t - p); its entries sum to 0, so the shift cancels.
        ends = [(p.gather(1, column) * (onehot - p) * change).sum(1) for p in (p0, p1)]
        return torch.stack(ends, dim=1)
    if kind is ScoreKind.sigmoid:
        q0, q1 = p0.gather(1, column).squeeze(1), p1.gather(1, column).squeeze(1)
        change = torch.logit(q1, eps=1e-15) - torch.logit(q0, eps=1e-15)
        return torch.stack([q0 * (1 - q0) * change, q1 * (1 - q1) * change], dim=1)
    return torch.full((len(target), 2), float("nan"), dtype=torch.float64, device=target.device)


class Backend(Protocol):
    """Scores and input gradients for a batch; nothing about files, configs or paths."""

    device: torch.device
    dtype: torch.dtype
    score_kind: ScoreKind
    runtime: str  # what runs the model: torch | onnxruntime

    def scores(self, x: Tensor) -> Tensor:
        """F(x) as [B, classes], without gradients."""
        ...

    def scores_and_grads(self, x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """F(x) and d(sum_b weights[b] . F(x)[b]) / dx: one forward, one backward, whole batch."""
        ...


class Batching(Protocol):
    """How the engine cuts path points into backend calls (backends/batching.py: padded shapes,
    out-of-memory halving). ``points`` may fall during a run."""

    points: int

    def padded(self, rows: int) -> int:
        """The rows a call of ``rows`` points is padded to (padding rows carry zero weight)."""
        ...

    def scores(self, backend: Backend, x: Tensor) -> Tensor:
        """F(x) for any number of rows."""
        ...

    def scores_and_grads(self, backend: Backend, x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """``backend.scores_and_grads`` for one batch, however the policy runs it."""
        ...
