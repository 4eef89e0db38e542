"""Tiny seeded models built in the tests, and IG on them in one call."""
from __future__ import annotations

import torch
from torch import nn

from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule
from igcli.backends.base import ScoreKind
from igcli.backends.torch_backend import TorchBackend


def smooth_mlp(seed: int = 0, features: int = 6, classes: int = 3, dtype=torch.float64) -> nn.Module:
    """A smooth (tanh) net, so quadrature errors follow their textbook orders."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 16), nn.Tanh(), nn.Linear(16, classes)).to(dtype)


def small_cnn(seed: int = 0, channels: int = 1, classes: int = 4, dtype=torch.float64) -> nn.Module:
    """A ReLU/max-pool CNN for [channels, 8, 8] inputs, like the nets users bring."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, classes),
    ).to(dtype)


class NanGradientWhenBright(torch.autograd.Function):
    """The identity, whose gradient is NaN for every row whose mean is past ``threshold``: the
    model's outputs stay finite, IG on those rows does not (a model broken only in its backward)."""

    @staticmethod
    def forward(ctx, x, threshold):
        ctx.save_for_backward(x)
        ctx.threshold = threshold
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        bright = (x.flatten(1).mean(1) > ctx.threshold).view((-1,) + (1,) * (x.dim() - 1))
        return torch.where(bright, torch.full_like(grad, float("nan")), grad), None


def backend(module: nn.Module, score: str = "logits") -> TorchBackend:
    return TorchBackend(module, ScoreKind(score), "cpu")


def integrated_gradients(module_or_backend, x, baseline, target=0, rule=Rule.gausslegendre, steps=64,
                         score="logits", batch_size=256):
    """IG of one fixed-step rule with one baseline per input; returns the Explanations."""
    runner = module_or_backend if isinstance(module_or_backend, TorchBackend) else backend(module_or_backend, score)
    if baseline.dim() == x.dim():
        baseline = baseline.unsqueeze(1)
    spec = TargetSpec("index", target) if isinstance(target, int) else target
    return attribute(runner, x, baseline, spec, Quadrature(rule, steps), batch_size)
