"""Max pools moved before the ReLUs that feed them: bit-identical scores and gradients, the user's
model untouched, and no move where it would change the function."""
import copy
from pathlib import Path

import pytest
import torch
from torch import fx, nn
from torch.nn import functional as F

from igcli.backends import torch_backend
from igcli.backends.loading import load_module
from igcli.backends.rewrites.pool_first import pool_before_relu
from igcli.backends.torch_backend import TorchBackend

SAMPLE_MODEL = Path(__file__).resolve().parents[1] / "sample_data" / "models" / "digits_cnn.pt2"


class Mixed(nn.Module):
    """Every spelling of the pair: layers, functions, a tensor method, an adaptive pool, an
    in-place ReLU, a 3x3 pool with stride 2 and padding (overlapping windows, as in the ResNet stem)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv4 = nn.Conv2d(6, 4, 3, padding=1)
        self.head = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))  # 8x8 -> 4x4
        x = F.max_pool2d(F.relu(self.conv2(x)), 3, stride=1, padding=1)
        x = torch.max_pool2d(self.conv3(x).relu(), 1)
        x = F.adaptive_max_pool2d(torch.relu(self.conv4(x)), 2)
        return self.head(torch.flatten(x, 1))


class NotMovable(nn.Module):
    """A ReLU output used twice, an in-place ReLU whose input is used again afterwards (it saw the
    ReLU's result), and pools that return indices: none of them may move."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.pool_with_indices = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        a = self.pool(y) + y[:, :, ::2, ::2]
        z = self.conv(x)
        b = self.pool(F.relu(z, inplace=True)) + z[:, :, ::2, ::2]
        c = F.max_pool2d(torch.relu(self.conv(x)), 2, return_indices=True)[0]
        d = self.pool_with_indices(nn.functional.relu(self.conv(x)))[0]
        return (a + b + c + d).flatten(1)


def _order(module: nn.Module) -> list[str]:
    """'relu' and 'pool' in the order the graph runs them."""
    traced = module if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module)
    names = []
    for node in traced.graph.nodes:
        text = node.name  # fx names a call after its function: relu_1, max_pool2d, adaptive_max_pool2d
        if node.op == "call_module":
            text = type(traced.get_submodule(node.target)).__name__.lower()
        if "relu" in text:
            names.append("relu")
        elif "max_pool" in text or "maxpool" in text:
            names.append("pool")
    return names


def _inputs(shape, seed: int) -> torch.Tensor:
    """Values on a coarse grid, so that pooling windows hold ties (positive, zero and negative)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, shape, generator=g).double() / 2


def _scores_and_grads(module: nn.Module, x: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = torch.softmax(module(x), dim=1)
    weights = torch.nn.functional.one_hot(torch.arange(len(x)) % classes, classes).to(out.dtype)
    (grads,) = torch.autograd.grad((out * weights).sum(), x)
    return out.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_spelling_moves_and_scores_and_gradients_stay_bit_identical(dtype):
    model = Mixed().to(dtype).eval()
    original = copy.deepcopy(model.state_dict())
    moved = pool_before_relu(model)
    assert _order(model) == ["relu", "pool"] * 4 and _order(moved) == ["pool", "relu"] * 4
    for seed in range(3):
        x = _inputs((16, 2, 8, 8), seed).to(dtype)
        want, got = _scores_and_grads(model, x, 5), _scores_and_grads(moved, x, 5)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
        assert want[1].abs().sum() > 0  # the gradients are not trivially zero
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # the user's model as it was
    assert _order(model) == ["relu", "pool"] * 4


def test_the_backend_moves_the_exported_sample_models_pools_and_gives_the_same_gradients(monkeypatch):
    backend = TorchBackend(load_module(SAMPLE_MODEL, None), "softmax")
    assert _order(backend.module) == ["pool", "relu", "pool", "relu", "relu"]
    monkeypatch.setattr(torch_backend, "pool_before_relu", lambda module: module)
    unmoved = TorchBackend(load_module(SAMPLE_MODEL, None), "softmax")
    assert _order(unmoved.module) == ["relu", "pool", "relu", "pool", "relu"]
    x = _inputs((32, 1, 32, 32), 0).float()
    weights = torch.nn.functional.one_hot(torch.arange(32) % 10, 10).float()
    want, got = unmoved.scores_and_grads(x, weights), backend.scores_and_grads(x, weights)
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


def test_pairs_that_would_change_the_function_stay():
    model = NotMovable().double().eval()
    assert pool_before_relu(model) is model  # nothing to move: the user's own module


def test_untraceable_models_stay_as_they_are():
    class Branching(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return F.max_pool2d(torch.relu(x), 2).flatten(1)
            return x.flatten(1)

    model = Branching()
    assert pool_before_relu(model) is model
    scripted = torch.jit.script(nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)))
    assert pool_before_relu(scripted) is scripted
