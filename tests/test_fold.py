"""Batch norms folded into the layers before them: same numbers, user's model untouched, and no fold
where it would change the function (shared layers, batch statistics, untraceable models)."""
import copy

import pytest
import torch
from torch import nn

from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule
from igcli.backends.rewrites.fold import fold_batch_norms
from igcli.backends.torch_backend import TorchBackend


def _norm(channels: int, seed: int, track: bool = True, dims: int = 2) -> nn.Module:
    """A batch norm with non-trivial statistics and affine parameters (defaults would fold to a no-op)."""
    g = torch.Generator().manual_seed(seed)
    norm = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels, track_running_stats=track)
    norm.weight.data = torch.rand(channels, generator=g) + 0.5
    norm.bias.data = torch.randn(channels, generator=g)
    if track:
        norm.running_mean = torch.randn(channels, generator=g)
        norm.running_var = torch.rand(channels, generator=g) + 0.2
    return norm


class Branchy(nn.Module):
    """Attribute layers called from forward (not a Sequential), a shortcut, a conv whose output
    also feeds a second branch (not foldable), and a linear -> BatchNorm1d head."""

    def __init__(self, track: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1, bias=False), _norm(4, 1, track)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), _norm(4, 2, track)
        self.side = nn.Conv2d(4, 4, 1)
        self.fc, self.bn_fc = nn.Linear(4 * 6 * 6, 5), _norm(5, 3, track, dims=1)
        self.double()

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        z = self.conv2(y)
        y = torch.relu(self.bn2(z) + self.side(z) + y)  # conv2's output is used twice: no fold
        return self.bn_fc(self.fc(torch.flatten(y, 1)))


class SharedConv(nn.Module):
    """One conv called twice, once before a batch norm: folding it would change its other call."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn = nn.Conv2d(2, 2, 3, padding=1), _norm(2, 4)
        self.head = nn.Linear(2 * 6 * 6, 3)
        self.double()

    def forward(self, x):
        return self.head(torch.flatten(self.bn(self.conv(x)) + self.conv(x), 1))


class DataDependent(nn.Module):
    """A branch on a tensor's value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn = nn.Conv2d(2, 3, 3), _norm(3, 5)
        self.head = nn.Linear(3 * 4 * 4, 3)
        self.double()

    def forward(self, x):
        y = self.bn(self.conv(x))
        if y.mean() > 100:
            y = -y
        return self.head(torch.flatten(y, 1))


def _plain_scores_and_grads(module, x, classes):
    weights = torch.zeros(len(x), classes, dtype=x.dtype)
    weights[torch.arange(len(x)), torch.arange(len(x)) % classes] = 1
    x = x.clone().requires_grad_(True)
    scores = torch.softmax(module(x), 1)
    (grads,) = torch.autograd.grad((scores * weights).sum(), x)
    return scores.detach(), grads, weights


def _norms(module):
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _backend_matches_plain(model, classes):
    model.eval()
    untouched = copy.deepcopy(model)
    x = torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    scores, grads, weights = _plain_scores_and_grads(untouched, x, classes)
    backend = TorchBackend(model, "softmax")
    got_scores, got_grads = backend.scores_and_grads(x, weights)
    torch.testing.assert_close(got_scores, scores, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grads, grads, rtol=1e-10, atol=1e-12)
    return backend, untouched, x


def test_foldable_norms_are_folded_with_the_same_scores_and_gradients():
    model = Branchy()
    backend, untouched, x = _backend_matches_plain(model, 5)
    assert _norms(model) == 3 and _norms(backend.module) == 1  # bn2 stays: conv2 feeds `side` too
    # the user's model keeps its own layers and numbers (the backend's channels-last weights, shared
    # where a layer was not folded, change only the rounding)
    assert all(isinstance(getattr(model, name), nn.BatchNorm2d) for name in ("bn1", "bn2"))
    torch.testing.assert_close(model(x), untouched(x), rtol=1e-12, atol=1e-14)


def test_integrated_gradients_through_a_folded_model_match_captum_on_the_unfolded_model():
    from captum.attr import IntegratedGradients

    model = Branchy().eval()
    x = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    baseline = torch.zeros_like(x)
    expected = IntegratedGradients(copy.deepcopy(model)).attribute(x, baseline, target=2, n_steps=32,
                                                                  method="gausslegendre")
    (result,) = attribute(TorchBackend(model, "logits"), x, baseline[:, None], TargetSpec("index", 2),
                        Quadrature(Rule.gausslegendre, 32))
    # captum rounds its quadrature weights to float32, hence the tolerance
    torch.testing.assert_close(result.attributions, expected[0], rtol=1e-6, atol=1e-9)


def test_batch_statistics_norms_are_not_folded():
    model = Branchy(track=False)  # eval mode still normalises by each batch's own statistics
    backend, _, _ = _backend_matches_plain(model, 5)
    assert backend.module is model


@pytest.mark.parametrize("model, classes", [(SharedConv(), 3), (DataDependent(), 3)],
                         ids=["shared layer", "untraceable"])
def test_models_folding_would_change_or_cannot_trace_are_kept_whole(model, classes):
    backend, _, _ = _backend_matches_plain(model, classes)
    assert backend.module is model


def test_models_without_norms_are_returned_as_they_are():
    model = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Flatten(), nn.Linear(32, 3))
    assert fold_batch_norms(model) is model
