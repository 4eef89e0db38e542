"""Same model, inputs, baseline, rule and steps as captum's IntegratedGradients -> same numbers."""
import pytest
import torch
from captum.attr import IntegratedGradients

from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule
from igcli.backends.loading import load_model

from .conftest import SAMPLE_DATA
from .nets import backend, small_cnn

CAPTUM_METHODS = {
    Rule.gausslegendre: "gausslegendre",
    Rule.riemann_left: "riemann_left",
    Rule.riemann_right: "riemann_right",
    Rule.riemann_middle: "riemann_middle",
}


def max_relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def captum_ig(forward, x, baselines, target, rule, steps):
    return IntegratedGradients(forward).attribute(
        x, baselines=baselines, target=target, n_steps=steps, method=CAPTUM_METHODS[rule])


@pytest.mark.parametrize("rule", list(CAPTUM_METHODS))
@pytest.mark.parametrize("score", ["logits", "softmax"])
def test_parity_with_captum_float64(rule, score):
    model = small_cnn(channels=3, classes=5)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(3, 3, 8, 8, generator=generator, dtype=torch.float64)
    baselines = torch.rand(3, 3, 8, 8, generator=generator, dtype=torch.float64)
    target = [4, 0, 2]

    def forward(batch):
        out = model(batch)
        return torch.softmax(out, dim=1) if score == "softmax" else out

    theirs = captum_ig(forward, x, baselines, target, rule, 50)
    runner = backend(model, score)
    for n in range(3):
        (ours,) = attribute(runner, x[n:n + 1], baselines[n:n + 1, None], TargetSpec("index", target[n]),
                          Quadrature(rule, 50), batch_size=64)
        assert max_relative_difference(ours.attributions, theirs[n]) <= 1e-5
        torch.testing.assert_close(ours.attributions, theirs[n], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("rule", [Rule.gausslegendre, Rule.riemann_middle])
def test_parity_with_captum_on_the_sample_model(rule):
    runner = load_model(SAMPLE_DATA / "models" / "digits_cnn.pt2", None, "softmax", torch.device("cpu"))
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    baselines = torch.full_like(x, -1.0)  # black, after (p - 0.5) / 0.5
    target = runner.scores(x).argmax(1)

    def forward(batch):
        return torch.softmax(runner.module(batch), dim=1)

    theirs = captum_ig(forward, x, baselines, target, rule, 64)
    ours = attribute(runner, x, baselines[:, None], TargetSpec("predicted"), Quadrature(rule, 64), batch_size=100)
    for n, result in enumerate(ours):
        assert result.target == int(target[n])
        assert max_relative_difference(result.attributions, theirs[n]) <= 1e-5
