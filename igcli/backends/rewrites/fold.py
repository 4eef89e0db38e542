"""Batch norms folded into the convolution (or linear layer) before them, for frozen eval-mode models.

In eval mode a batch norm is a fixed per-channel affine map, so conv -> batch norm is one conv with
rescaled weights and a bias: the same function up to float rounding, without the batch norm's
forward and backward passes over every activation (see docs/performance.md#batch-norm-folding).

Folding needs the model's graph (which layer feeds which), so it runs on torch.fx's symbolic trace.
Models that cannot be traced (data-dependent control flow, TorchScript) or have nothing to fold
stay as they are, and so does the whole model when a folded layer would be called twice, since
folding it would change its other call too.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (in eval mode) with its conv/linear -> batch norm pairs folded; ``module``
    itself where there is nothing to fold or it cannot be traced."""
    norms = _norms(module)
    if not norms:
        return module
    try:
        traced = torch.fx.symbolic_trace(module)
    except Exception:  # noqa: BLE001 -- any trace failure means "not foldable", never an error
        return module
    calls = Counter(node.target for node in traced.graph.nodes if node.op == "call_module")
    if any(count > 1 for count in calls.values()):
        return module
    # In place on the trace only: its leaf layers are the user's, but fuse replaces them with
    # folded copies in the trace's own tree, so the user's model is left as it was.
    folded = fuse(traced, inplace=True, no_trace=True)
    return module if _norms(folded) == norms else folded  # nothing folded: keep the user's own


def _norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
