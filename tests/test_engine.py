"""The engine against closed forms, the paper's axioms, and itself batched differently."""
import math

import pytest
import torch
from torch import nn

from igcli.attribution import adaptive, group_sums
from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule

from .nets import NanGradientWhenBright, backend, integrated_gradients, small_cnn, smooth_mlp


def inputs(shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class OneMinusRelu(nn.Module):
    """The paper's Sensitivity(a) example: F(x) = 1 - ReLU(1 - x)."""

    def forward(self, x):
        return (1 - torch.relu(1 - x)).sum(dim=1, keepdim=True)

    def __init__(self):
        super().__init__()
        self.register_buffer("dtype_anchor", torch.zeros((), dtype=torch.float64))


def test_sensitivity_a_gradient_times_input_is_zero_but_ig_is_one():
    x, baseline = torch.tensor([[2.0]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    x_grad = x.clone().requires_grad_(True)
    OneMinusRelu()(x_grad).sum().backward()
    assert float(x_grad.grad * x) == 0.0  # gradient x input misses the feature
    # The kink at alpha = 1/2 falls between midpoint nodes, so the midpoint rule is exact here.
    (result,) = integrated_gradients(OneMinusRelu(), x, baseline, rule=Rule.riemann_middle, steps=64)
    assert float(result.attributions) == pytest.approx(1.0, abs=1e-12)
    assert result.abs_error == pytest.approx(0.0, abs=1e-12)
    # On a node, the kink costs the trapezoid half a weight: an O(1/m) error that refinement removes.
    for steps in (64, 1024):
        (result,) = integrated_gradients(OneMinusRelu(), x, baseline, rule=Rule.riemann_trapezoid, steps=steps)
        assert abs(float(result.attributions) - 1.0) <= 1.0 / steps


def test_sensitivity_b_dummy_feature_gets_zero():
    class IgnoresLast(nn.Module):
        def forward(self, x):
            return torch.tanh(x[:, :2]).prod(dim=1, keepdim=True) + 0 * self.anchor

        def __init__(self):
            super().__init__()
            self.register_buffer("anchor", torch.zeros((), dtype=torch.float64))

    x = inputs((3, 3))
    baseline = torch.zeros_like(x)
    results = integrated_gradients(IgnoresLast(), x, baseline)
    for result in results:
        assert float(result.attributions[2]) == 0.0


@pytest.mark.parametrize("rule", list(Rule))
@pytest.mark.parametrize("score", ["logits", "softmax"])
def test_completeness_on_nonlinear_nets_for_every_rule(rule, score):
    x = inputs((4, 1, 8, 8))
    results = integrated_gradients(small_cnn(), x, torch.zeros_like(x), target=2, rule=rule, steps=256, score=score)
    for result in results:
        expected = result.f_input - result.f_baseline
        assert result.attribution_sum == pytest.approx(expected, rel=0.02, abs=1e-6)
        assert result.rel_error < 0.02


def _map_error(rule, steps, x, reference):
    (result,) = integrated_gradients(smooth_mlp(), x, torch.zeros_like(x), rule=rule, steps=steps)
    return float((result.attributions - reference).abs().max())


@pytest.mark.parametrize("rule,order", [
    (Rule.riemann_left, 1), (Rule.riemann_right, 1), (Rule.riemann_middle, 2), (Rule.riemann_trapezoid, 2),
])
def test_convergence_order_per_rule_on_a_smooth_net(rule, order):
    x = inputs((1, 6)) * 2
    (reference,) = integrated_gradients(smooth_mlp(), x, torch.zeros_like(x), rule=Rule.gausslegendre, steps=256)
    coarse, fine = _map_error(rule, 32, x, reference.attributions), _map_error(rule, 64, x, reference.attributions)
    assert coarse / fine == pytest.approx(2 ** order, rel=0.15)


def test_gauss_legendre_converges_faster_than_any_riemann_rule():
    x = inputs((1, 6)) * 2
    (reference,) = integrated_gradients(smooth_mlp(), x, torch.zeros_like(x), rule=Rule.gausslegendre, steps=256)
    gauss = _map_error(Rule.gausslegendre, 16, x, reference.attributions)
    best_riemann = min(_map_error(rule, 16, x, reference.attributions)
                       for rule in (Rule.riemann_middle, Rule.riemann_trapezoid))
    assert gauss < best_riemann / 100


def test_implementation_invariance_for_functionally_equal_nets():
    torch.manual_seed(3)
    first = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    # Same function, other structure: every hidden unit split in two halves, and permuted.
    second = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2)).double()
    order = torch.randperm(16)
    with torch.no_grad():
        second[0].weight.copy_(torch.cat([first[0].weight, first[0].weight])[order])
        second[0].bias.copy_(torch.cat([first[0].bias, first[0].bias])[order])
        second[2].weight.copy_(torch.cat([first[2].weight, first[2].weight], dim=1)[:, order] / 2)
        second[2].bias.copy_(first[2].bias)
    x = inputs((3, 5))
    assert torch.allclose(first(x), second(x), atol=1e-12)
    for a, b in zip(integrated_gradients(first, x, torch.zeros_like(x), target=1),
                    integrated_gradients(second, x, torch.zeros_like(x), target=1)):
        torch.testing.assert_close(a.attributions, b.attributions, rtol=1e-10, atol=1e-12)


def test_linearity_of_attributions_in_the_model():
    f, g = smooth_mlp(seed=1, classes=1), smooth_mlp(seed=2, classes=1)

    class Combined(nn.Module):
        def __init__(self):
            super().__init__()
            self.f, self.g = f, g

        def forward(self, x):
            return 2.0 * self.f(x) - 0.5 * self.g(x)

    x = inputs((2, 6))
    base = torch.zeros_like(x)
    for combined, a, b in zip(integrated_gradients(Combined(), x, base), integrated_gradients(f, x, base),
                              integrated_gradients(g, x, base)):
        torch.testing.assert_close(combined.attributions, 2.0 * a.attributions - 0.5 * b.attributions)


def test_symmetry_preservation():
    class Symmetric(nn.Module):  # symmetric in features 0 and 1
        def forward(self, x):
            return (torch.sigmoid(x[:, 0] * x[:, 1]) + torch.tanh(x[:, 0] + x[:, 1]) + x[:, 2] ** 2).unsqueeze(1)

    x = torch.tensor([[0.7, 0.7, -1.2], [2.0, 2.0, 0.3]])  # float32 model, float32 path
    for result in integrated_gradients(Symmetric(), x, torch.zeros_like(x)):
        assert float(result.attributions[0]) == pytest.approx(float(result.attributions[1]), rel=1e-6)


def test_batching_adds_the_same_terms_as_one_point_at_a_time():
    x = inputs((3, 1, 8, 8))
    base = torch.rand(3, 2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    runner = backend(small_cnn())
    quad = Quadrature(Rule.riemann_trapezoid, None, tolerance=1e-3, min_steps=4, max_steps=64)
    one = attribute(runner, x, base, TargetSpec("top_k", 2), quad, batch_size=1)
    many = attribute(runner, x, base, TargetSpec("top_k", 2), quad, batch_size=1000)
    for a, b in zip(one, many):
        torch.testing.assert_close(a.attributions, b.attributions, rtol=1e-12, atol=1e-15)
        assert (a.steps, a.gradient_evals) == (b.steps, b.gradient_evals)


def test_several_baselines_average_their_attributions():
    x = inputs((2, 1, 8, 8))
    bases = torch.rand(2, 3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = small_cnn()
    averaged = integrated_gradients(model, x, bases, target=1, steps=256)
    for k in range(3):
        single = integrated_gradients(model, x, bases[:, k], target=1, steps=256)
        for n in range(2):
            averaged_n = averaged[n]
            if k == 0:
                expected = sum(integrated_gradients(model, x, bases[:, j], target=1, steps=256)[n].attributions
                               for j in range(3)) / 3
                torch.testing.assert_close(averaged_n.attributions, expected)
            assert single[n].f_input == pytest.approx(averaged_n.f_input)
    for n in range(2):
        singles = [integrated_gradients(model, x, bases[:, k], target=1, steps=256)[n] for k in range(3)]
        assert averaged[n].f_baseline == pytest.approx(sum(s.f_baseline for s in singles) / 3, rel=1e-12)
        assert averaged[n].abs_error <= sum(s.abs_error for s in singles) / 3 + 1e-12
        assert averaged[n].gradient_evals == 3 * 256


def test_adaptive_steps_stop_per_input_and_reuse_every_gradient():
    x = torch.cat([inputs((1, 6)) * 0.01, inputs((1, 6), seed=5) * 3])
    quad = Quadrature(Rule.riemann_trapezoid, None, tolerance=1e-4, min_steps=2, max_steps=1024)
    baselines = torch.zeros(2, 1, 6, dtype=torch.float64)
    results = attribute(backend(smooth_mlp(), "softmax"), x, baselines, TargetSpec("index", 0), quad)
    assert results[0].steps < results[1].steps  # a near-linear path stops early
    for result in results:
        assert result.converged and result.rel_error <= 1e-4
        assert result.gradient_evals == result.steps + 1  # nested: no gradient computed twice


def test_adaptive_gives_up_at_max_steps_and_says_so():
    x = inputs((1, 1, 8, 8)) * 3
    quad = Quadrature(Rule.riemann_trapezoid, None, tolerance=1e-12, min_steps=2, max_steps=16)
    (result,) = attribute(backend(small_cnn()), x, torch.zeros(1, 1, 1, 8, 8, dtype=torch.float64), TargetSpec("index", 0), quad)
    assert result.steps == 16 and not result.converged


def test_predicted_and_top_k_targets():
    x = inputs((3, 1, 8, 8))
    runner = backend(small_cnn(), "softmax")
    scores = runner.scores(x)
    quad = Quadrature(Rule.gausslegendre, 8)
    predicted = attribute(runner, x, torch.zeros(3, 1, 1, 8, 8, dtype=torch.float64), TargetSpec("predicted"), quad)
    assert [r.target for r in predicted] == scores.argmax(1).tolist()
    top = attribute(runner, x, torch.zeros(3, 1, 1, 8, 8, dtype=torch.float64), TargetSpec("top_k", 3), quad)
    assert [(r.input_index, r.rank) for r in top] == [(n, k) for n in range(3) for k in (1, 2, 3)]
    assert [r.target for r in top] == scores.topk(3, dim=1).indices.flatten().tolist()


def test_parameters_never_get_gradients():
    model = small_cnn()
    x = inputs((2, 1, 8, 8))
    integrated_gradients(model, x, torch.zeros_like(x), steps=8)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("rule", [Rule.gausslegendre, Rule.adaptive])
def test_sums_into_attributions_never_repeat_an_index_in_one_scatter(monkeypatch, rule):
    """On CUDA a scatter-add with a repeated index adds in whatever order its atomics land, so
    runs would differ in the last bits (and the adaptive rule could bisect other intervals). The
    CPU adds in index order and may repeat; here the CPU takes the path every other device takes."""
    monkeypatch.setattr(group_sums, "ORDERED_SCATTER_DEVICES", set())
    calls = []
    plain = torch.Tensor.index_add_

    def recording(self, dim, index, source, **kwargs):
        calls.append(index.tolist())
        return plain(self, dim, index, source, **kwargs)

    monkeypatch.setattr(torch.Tensor, "index_add_", recording)
    x = inputs((3, 1, 8, 8))
    base = torch.zeros(3, 1, 1, 8, 8, dtype=torch.float64)
    quad = Quadrature(rule, 24 if rule is Rule.gausslegendre else None, tolerance=1e-4, map_tolerance=0.01)
    results = {size: attribute(backend(small_cnn()), x, base, TargetSpec("top_k", 2), quad, batch_size=size)
               for size in (7, 1000)}  # 7: batches end mid-path
    assert calls and all(len(set(index)) == len(index) for index in calls)
    for a, b in zip(*results.values()):
        torch.testing.assert_close(a.attributions, b.attributions, rtol=1e-12, atol=1e-15)


class _NanGradientNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = smooth_mlp()

    def forward(self, x):
        return self.inner(NanGradientWhenBright.apply(x, 0.7))


@pytest.mark.parametrize("rule", [Rule.gausslegendre, Rule.adaptive])
def test_a_nan_gradient_shows_in_the_attribution_sum_and_stops_refinement(rule):
    """Records are failures when a number is not finite; attribution_sum stands for the whole map."""
    x = torch.tensor([[0.5] * 6, [0.5] * 5 + [3.0]], dtype=torch.float64)
    results = attribute(backend(_NanGradientNet()), x, torch.zeros(2, 1, 6, dtype=torch.float64),
                      TargetSpec("index", 0), Quadrature(rule, 16 if rule is Rule.gausslegendre else None))
    assert all(math.isfinite(r.f_input) and math.isfinite(r.f_baseline) for r in results)
    assert math.isfinite(results[0].attribution_sum) and torch.isfinite(results[0].attributions).all()
    assert not math.isfinite(results[1].attribution_sum) and not torch.isfinite(results[1].attributions).all()
    if rule is Rule.adaptive:  # no refinement mends a NaN: that path stops after the first round
        assert results[1].steps == adaptive.INITIAL_INTERVALS and results[1].gradient_evals <= 5
