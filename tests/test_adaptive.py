"""The locally adaptive trapezoid (method: adaptive), checked against closed forms and fixed rules."""
import pytest
import torch
from torch import nn

from igcli.attribution import adaptive as adaptive_module
from igcli.attribution import group_sums
from igcli.attribution.engine import Quadrature, TargetSpec, attribute, start_offset
from igcli.attribution.quadrature import Rule
from igcli.runtime import buffers as buffers_module

from .nets import backend, integrated_gradients, small_cnn, smooth_mlp


class ReluSum(nn.Module):
    """F(x) = sum_j v_j relu(w_j . x + b_j): IG has a closed form on a straight path."""

    def __init__(self, features: int = 5, units: int = 7, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(units, features, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(units, generator=g, dtype=torch.float64))
        self.v = nn.Parameter(torch.randn(units, generator=g, dtype=torch.float64))

    def forward(self, x):
        return (torch.relu(x @ self.w.T + self.b) * self.v).sum(1, keepdim=True)

    @torch.no_grad()
    def exact_ig(self, x, baseline):
        """Unit j's gradient is v_j w_j where its pre-activation is positive: a fraction of [0, 1]."""
        delta = x - baseline
        start, end = baseline @ self.w.T + self.b, x @ self.w.T + self.b
        crossing = (-start / (end - start)).clamp(0, 1)  # where the pre-activation changes sign
        active = torch.where(end > start, 1 - crossing, crossing)
        active = torch.where(end == start, (start > 0).double(), active)
        return delta * ((active * self.v) @ self.w)


def inputs(shape, seed=3):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def adaptive(steps=None, tolerance=0.01, max_steps=512):
    return Quadrature(Rule.adaptive, steps, tolerance=tolerance, max_steps=max_steps)


def test_matches_the_closed_form_on_a_piecewise_linear_net():
    model, x = ReluSum(), inputs((4, 5)) * 2
    baseline = torch.zeros_like(x)
    exact = model.exact_ig(x, baseline)
    results = attribute(backend(model), x, baseline.unsqueeze(1), TargetSpec("index", 0), adaptive(tolerance=1e-6, max_steps=4096))
    for result, expected in zip(results, exact):
        assert result.converged
        torch.testing.assert_close(result.attributions, expected, rtol=1e-4, atol=1e-5)


def test_spends_fewer_evaluations_than_uniform_refinement_where_the_gradient_jumps():
    model, x = ReluSum(units=3, seed=4), inputs((6, 5), seed=9) * 3
    baseline = torch.zeros(6, 1, 5, dtype=torch.float64)
    exact = model.exact_ig(x, baseline[:, 0])
    uniform = Quadrature(Rule.riemann_trapezoid, None, tolerance=1e-3, min_steps=4, max_steps=4096)
    local = attribute(backend(model), x, baseline, TargetSpec("index", 0), adaptive(tolerance=1e-3, max_steps=4096))
    even = attribute(backend(model), x, baseline, TargetSpec("index", 0), uniform)
    assert sum(r.gradient_evals for r in local) < 0.5 * sum(r.gradient_evals for r in even)
    local_error = sum(float((r.attributions - e).abs().sum()) for r, e in zip(local, exact))
    even_error = sum(float((r.attributions - e).abs().sum()) for r, e in zip(even, exact))
    assert local_error <= 2 * even_error


@pytest.mark.parametrize("score", ["logits", "softmax"])
def test_stops_within_tolerance_on_a_cnn(score):
    x = inputs((5, 1, 8, 8))
    results = attribute(backend(small_cnn(), score), x, torch.zeros(5, 1, 1, 8, 8, dtype=torch.float64),
                      TargetSpec("predicted"), adaptive(tolerance=0.005))
    for result in results:
        assert result.converged and result.rel_error <= 0.005
        assert result.attribution_sum == pytest.approx(result.f_input - result.f_baseline, rel=0.005)
    # Every evaluation is a node of the final rule.
    assert [r.gradient_evals for r in results] == [r.steps + 1 for r in results]


def test_converges_to_the_integral_on_a_smooth_net():
    x = inputs((3, 6))
    (reference,) = integrated_gradients(smooth_mlp(), x[:1], torch.zeros_like(x[:1]), rule=Rule.gausslegendre, steps=256)
    errors = []
    for tolerance in (1e-2, 1e-4, 1e-6):
        (result,) = attribute(backend(smooth_mlp()), x[:1], torch.zeros(1, 1, 6, dtype=torch.float64),
                            TargetSpec("index", 0), adaptive(tolerance=tolerance, max_steps=4096))
        errors.append(float((result.attributions - reference.attributions).abs().max()))
    assert errors[2] < errors[1] < errors[0] and errors[2] < 1e-5


def test_fixed_steps_spend_exactly_that_many_intervals():
    x = inputs((2, 1, 8, 8))
    for steps in (1, 3, 4, 25):
        results = attribute(backend(small_cnn()), x, torch.zeros(2, 1, 1, 8, 8, dtype=torch.float64),
                          TargetSpec("index", 1), adaptive(steps=steps))
        assert [(r.steps, r.gradient_evals) for r in results] == [(steps, steps + 1)] * 2


def test_gives_up_at_max_steps_and_says_so():
    x = inputs((1, 1, 8, 8)) * 3
    (result,) = attribute(backend(small_cnn()), x, torch.zeros(1, 1, 1, 8, 8, dtype=torch.float64),
                        TargetSpec("index", 0), adaptive(tolerance=1e-14, max_steps=16))
    assert result.steps == 16 and not result.converged


def test_batch_size_changes_nothing():
    x = inputs((3, 1, 8, 8))
    base = torch.rand(3, 2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    runner = backend(small_cnn())
    one = attribute(runner, x, base, TargetSpec("top_k", 2), adaptive(tolerance=1e-3), batch_size=1)
    many = attribute(runner, x, base, TargetSpec("top_k", 2), adaptive(tolerance=1e-3), batch_size=1000)
    for a, b in zip(one, many):
        torch.testing.assert_close(a.attributions, b.attributions, rtol=1e-12, atol=1e-15)
        assert (a.steps, a.gradient_evals) == (b.steps, b.gradient_evals)


@pytest.mark.parametrize("map_tolerance", [0.05, 0.01])
def test_map_tolerance_bounds_the_map_error_against_the_closed_form(map_tolerance):
    """The map's estimated error is an upper bound in practice: the exact IG is within it."""
    model, x = ReluSum(features=6, units=40, seed=5), inputs((8, 6), seed=11) * 3
    baseline = torch.zeros_like(x)
    exact = model.exact_ig(x, baseline)
    quad = Quadrature(Rule.adaptive, None, tolerance=0.01, max_steps=4096, map_tolerance=map_tolerance)
    results = attribute(backend(model), x, baseline.unsqueeze(1), TargetSpec("index", 0), quad)
    for result, expected in zip(results, exact):
        assert float((result.attributions - expected).norm()) <= map_tolerance * float(expected.norm())
        assert result.rel_error is None or result.rel_error <= 0.01


def test_map_tolerance_refines_where_completeness_alone_would_stop():
    """Two kinks whose completeness errors cancel: the signed sum is fine, the map is not."""
    model, x = ReluSum(features=6, units=40, seed=5), inputs((8, 6), seed=11) * 3
    baseline = torch.zeros(8, 1, 6, dtype=torch.float64)
    exact = model.exact_ig(x, baseline[:, 0])
    loose = Quadrature(Rule.adaptive, None, tolerance=0.05, max_steps=4096)
    tight = Quadrature(Rule.adaptive, None, tolerance=0.05, max_steps=4096, map_tolerance=0.005)
    errors = {}
    for name, quad in (("completeness", loose), ("map", tight)):
        results = attribute(backend(model), x, baseline, TargetSpec("index", 0), quad)
        errors[name] = max(float((r.attributions - e).norm() / e.norm()) for r, e in zip(results, exact))
    assert errors["map"] <= 0.005 < errors["completeness"]


class PooledLinear(nn.Module):
    """F(x) = w . maxpool2x2(x). From a constant baseline every pool window ties at alpha 0; for
    alpha > 0 each window's maximum is the element where x - x' is largest, so F is linear in
    alpha there and IG has a closed form: w_k (x - x') at that element of window k, 0 elsewhere."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.w = nn.Parameter(torch.randn(1, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))

    def forward(self, x):
        return nn.functional.max_pool2d(x, 2).flatten(1) @ self.w.T

    @torch.no_grad()
    def exact_ig(self, x, baseline):
        delta = (x - baseline).flatten(1).view(-1, 2, 2, 2, 2).transpose(2, 3).reshape(-1, 4, 4)  # [n, window, element]
        winner = nn.functional.one_hot(delta.argmax(2), 4) * delta * self.w.view(1, 4, 1)
        return winner.view(-1, 2, 2, 2, 2).transpose(2, 3).reshape(x.shape)


def tied_at_the_baseline():
    """PooledLinear, inputs, a black baseline, and the exact IG, with every window's largest element
    last, so that the tie at the baseline (won by the first) picks the wrong one."""
    model = PooledLinear()
    offsets = torch.tensor([[0.0, 2.0], [4.0, 6.0]], dtype=torch.float64).repeat(2, 2)
    x = torch.rand((3, 1, 4, 4), generator=torch.Generator().manual_seed(2), dtype=torch.float64) + offsets
    baseline = torch.full((3, 1, 1, 4, 4), -1.0, dtype=torch.float64)
    exact = model.exact_ig(x, baseline[:, 0])
    assert (exact.flatten(1)[:, 0] == 0).all()  # the first element of a window never wins
    return model, x, baseline, exact


@pytest.mark.parametrize("rule", [Rule.adaptive, Rule.riemann_trapezoid, Rule.riemann_left])
def test_the_gradient_at_alpha_0_is_the_paths_not_the_tied_baselines(rule):
    """At a black baseline max pools tie, and the gradient there belongs to no other point of the
    path. A rule's node at alpha 0 stands for the path's start, so it must take the path's
    gradient: 4 uniform steps are then exact here, where the tied gradient would put a quarter
    (riemann_left) or an eighth (the trapezoids) of each window's weight on the wrong element."""
    model, x, baseline, exact = tied_at_the_baseline()
    results = attribute(backend(model), x, baseline, TargetSpec("index", 0), Quadrature(rule, 4))
    for result, expected in zip(results, exact, strict=True):
        torch.testing.assert_close(result.attributions, expected, rtol=1e-9, atol=1e-12)


def test_the_adaptive_rule_takes_f_at_alpha_0_from_the_baseline():
    """F at the first node is F(x') itself, not F where its gradient was taken: with it, every
    interval of the piecewise-linear net above is exact from the first round, and even a 1e-9
    tolerance stops after the one more round every path takes (no path stops on its first), which
    bisects a single interval: one evaluation per node."""
    model, x, baseline, exact = tied_at_the_baseline()
    results = attribute(backend(model), x, baseline, TargetSpec("index", 0), adaptive(tolerance=1e-9))
    for result, expected in zip(results, exact, strict=True):
        torch.testing.assert_close(result.attributions, expected, rtol=1e-9, atol=1e-12)
        assert (result.steps, result.gradient_evals, result.converged) == (5, 6, True)


@pytest.mark.parametrize("map_tolerance", [None, 0.05])
def test_each_path_refines_as_if_it_were_alone(map_tolerance):
    """A chunk's paths share the rule's arrays; sharing must not change what any one of them gets."""
    x = inputs((6, 1, 8, 8), seed=5) * 2
    base = torch.rand(6, 2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    runner = backend(small_cnn(), "softmax")
    quad = Quadrature(Rule.adaptive, None, tolerance=0.01, max_steps=512, map_tolerance=map_tolerance)
    together = attribute(runner, x, base, TargetSpec("top_k", 2), quad)
    alone = [r for n in range(6) for r in attribute(runner, x[n:n + 1], base[n:n + 1], TargetSpec("top_k", 2), quad)]
    assert len({r.steps for r in together}) > 2  # the paths stopped at different rounds
    for shared, single in zip(together, alone, strict=True):
        assert (shared.target, shared.rank, shared.steps, shared.gradient_evals, shared.converged) == \
            (single.target, single.rank, single.steps, single.gradient_evals, single.converged)
        torch.testing.assert_close(shared.attributions, single.attributions, rtol=1e-10, atol=1e-13)
        assert shared.abs_error == pytest.approx(single.abs_error, rel=1e-6, abs=1e-15)


@pytest.mark.parametrize("map_tolerance", [None, 0.05])
def test_the_cpu_scatter_and_the_other_devices_product_agree(monkeypatch, map_tolerance):
    """Per-path sums are index_add_ on the CPU (weighted rows a block at a time) and a one-hot
    product elsewhere (igcli.attribution.adaptive): both must bisect the same intervals and give the same
    attributions, up to rounding."""
    x = inputs((6, 1, 8, 8), seed=5) * 2
    base = torch.rand(6, 2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    quad = Quadrature(Rule.adaptive, None, tolerance=0.01, max_steps=512, map_tolerance=map_tolerance)
    monkeypatch.setattr(group_sums, "WEIGHTED_BLOCK_BYTES", 3 * 64 * 8)  # 3 maps a block: several blocks
    scatter = attribute(backend(small_cnn(), "softmax"), x, base, TargetSpec("top_k", 2), quad)
    monkeypatch.setattr(group_sums, "ORDERED_SCATTER_DEVICES", set())
    product = attribute(backend(small_cnn(), "softmax"), x, base, TargetSpec("top_k", 2), quad)
    assert len({r.steps for r in scatter}) > 2
    for a, b in zip(scatter, product, strict=True):
        assert (a.target, a.steps, a.gradient_evals, a.converged) == (b.target, b.steps, b.gradient_evals, b.converged)
        torch.testing.assert_close(a.attributions, b.attributions, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("block", [1, 512 * 3])
def test_the_stored_maps_growing_in_smaller_blocks_changes_nothing(monkeypatch, block):
    """At the default 32 MiB block the test nets' maps never outgrow their first buffer; smaller
    blocks make them grow (and copy) round after round."""
    x = inputs((6, 1, 8, 8), seed=5) * 2
    base = torch.rand(6, 2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    quad = Quadrature(Rule.adaptive, None, tolerance=0.01, max_steps=512, map_tolerance=0.05)
    default = attribute(backend(small_cnn(), "softmax"), x, base, TargetSpec("top_k", 2), quad, 256,
                      buffers_module.MapBuffers())
    grown = []
    capacity = buffers_module.MapBuffers.rows_for
    monkeypatch.setattr(buffers_module.MapBuffers, "rows_for", lambda *a: grown.append(capacity(*a)) or grown[-1])
    monkeypatch.setattr(buffers_module, "MAP_BLOCK_BYTES", block)
    monkeypatch.setattr(buffers_module, "WHOLE_RESERVE_BYTES", 0)  # grow, rather than reserve the most at once
    small = attribute(backend(small_cnn(), "softmax"), x, base, TargetSpec("top_k", 2), quad, 256,
                    buffers_module.MapBuffers())
    assert len(grown) >= 3 and grown == sorted(grown)  # the first buffer, then growths
    for a, b in zip(default, small, strict=True):
        assert (a.steps, a.gradient_evals, a.converged) == (b.steps, b.gradient_evals, b.converged)
        torch.testing.assert_close(a.attributions, b.attributions, rtol=0, atol=0)


def test_maps_kept_from_call_to_call_change_nothing(monkeypatch):
    """A run's calls share one MapBuffers (the job's): each call borrows the buffer the call before
    gave back. Results must match fresh buffers to the bit across map shapes, input counts and a
    buffer outgrown mid-call, with the kept buffer filled with NaN between calls, so that a read of
    a row this call did not write would show."""
    quad = Quadrature(Rule.adaptive, None, tolerance=0.01, max_steps=512, map_tolerance=0.05)
    calls = [(small_cnn(), inputs((6, 1, 8, 8), seed=5) * 2), (small_cnn(channels=3), inputs((3, 3, 8, 8), seed=6) * 2),
             (small_cnn(seed=1), inputs((9, 1, 8, 8), seed=7) * 2)]

    def run(model, x, buffers):
        base = torch.rand((len(x), 2) + x.shape[1:], generator=torch.Generator().manual_seed(1), dtype=x.dtype)
        return attribute(backend(model, "softmax"), x, base, TargetSpec("top_k", 2), quad, 16, buffers)

    fresh = [run(model, x, None) for model, x in calls]
    borrowed: dict[int, list] = {}
    borrow = buffers_module.MapBuffers.borrow
    monkeypatch.setattr(buffers_module.MapBuffers, "borrow",
                        lambda self, *a: borrowed[block].append(borrow(self, *a)) or borrowed[block][-1])
    for block in [32 << 20, 64 * 8 * 40]:  # one buffer for the run, then buffers outgrown within calls
        monkeypatch.setattr(buffers_module, "MAP_BLOCK_BYTES", block)
        monkeypatch.setattr(buffers_module, "WHOLE_RESERVE_BYTES", (1 << 30) if block == 32 << 20 else 0)
        buffers, borrowed[block] = buffers_module.MapBuffers(), []
        for (model, x), expected in zip(calls, fresh):
            if borrowed[block]:
                kept = borrow(buffers, 0, x)
                kept.fill_(float("nan"))
                buffers.give_back(kept)
            for a, b in zip(run(model, x, buffers), expected, strict=True):
                assert (a.steps, a.gradient_evals, a.converged) == (b.steps, b.gradient_evals, b.converged)
                torch.testing.assert_close(a.attributions, b.attributions, rtol=0, atol=0)
    run_buffer, outgrown = borrowed[32 << 20], borrowed[64 * 8 * 40]
    assert len(run_buffer) == 3 and len({b.data_ptr() for b in run_buffer}) == 1  # the first call's, kept
    assert len(outgrown) > 6 and len({b.data_ptr() for b in outgrown}) > 3


def test_map_buffers_lend_one_buffer_to_one_borrower():
    buffers = buffers_module.MapBuffers()
    like = torch.zeros(1)
    first, second = buffers.borrow(100, like), buffers.borrow(100, like)
    assert first.data_ptr() != second.data_ptr()
    buffers.give_back(first)
    assert buffers.borrow(50, like).data_ptr() == first.data_ptr()
    assert buffers.borrow(10, like.double()).dtype == torch.float64  # nothing kept of that dtype: a new one
    buffers.give_back(second)
    assert buffers.borrow(200, like).numel() == 200  # the kept one is too small: replaced
    assert buffers.borrow(1, like).data_ptr() not in (first.data_ptr(), second.data_ptr())


def test_a_chunk_the_model_fails_in_still_gives_its_map_buffer_back():
    model = backend(small_cnn(), "softmax")
    answer, calls = model.scores_and_grads, []

    def failing(points, weights):
        calls.append(len(points))
        if len(calls) == 5:  # the first round took 3 batches
            raise RuntimeError("the model failed mid-chunk")
        return answer(points, weights)

    model.scores_and_grads = failing
    buffers = buffers_module.MapBuffers()
    x = inputs((4, 1, 8, 8), seed=5) * 2
    quad = Quadrature(Rule.adaptive, None, tolerance=1e-4, max_steps=512, map_tolerance=0.01)
    with pytest.raises(RuntimeError, match="mid-chunk"):
        attribute(model, x, torch.zeros(4, 1, 1, 8, 8, dtype=torch.float64), TargetSpec("index", 0), quad, 8, buffers)
    assert buffers.borrow(1, x).numel() == buffers_module.MAP_BLOCK_BYTES // 8  # the chunk's, not a new one


class CountingBackend:
    """A backend that counts the points it takes gradients at."""

    def __init__(self, inner):
        self.inner, self.points = inner, 0
        self.device, self.dtype, self.score_kind, self.runtime = inner.device, inner.dtype, inner.score_kind, inner.runtime

    def scores(self, x):
        return self.inner.scores(x)

    def scores_and_grads(self, x, weights):
        self.points += int((weights != 0).any(1).sum())  # padding rows weigh nothing
        return self.inner.scores_and_grads(x, weights)


def saturating_linear(scale: float) -> nn.Module:
    """Three classes whose softmax goes from ~0 to ~1 for class 0 along x' = 0 -> x = 1: the
    head is saturated at both ends when ``scale`` is large."""
    model = nn.Linear(4, 3).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0, 0.5, 0.5], [0.5, -0.5, 1.0, 0.0], [0.0, 0.5, -0.5, 1.0]]) * scale)
        model.bias.copy_(torch.tensor([-1.5, 0.0, 0.0]) * scale)
    return model


@pytest.mark.parametrize("scale,flat", [(30.0, True), (0.5, False)])
def test_saturated_ends_take_no_gradient_and_the_result_still_matches(scale, flat):
    x = torch.ones(2, 4, dtype=torch.float64)
    x[1, 3] = 0.8
    baseline = torch.zeros(2, 1, 4, dtype=torch.float64)
    counting = CountingBackend(backend(saturating_linear(scale), "softmax"))
    results = attribute(counting, x, baseline, TargetSpec("index", 0), adaptive(tolerance=1e-3, max_steps=4096))
    reference = integrated_gradients(backend(saturating_linear(scale), "softmax"), x, baseline[:, 0], steps=1024)
    skipped = 2 if flat else 0
    assert [r.gradient_evals for r in results] == [r.steps + 1 - skipped for r in results]
    assert counting.points == sum(r.gradient_evals for r in results)  # the records count what was evaluated
    for result, expected in zip(results, reference):
        assert result.converged and result.rel_error <= 1e-3
        torch.testing.assert_close(result.attributions, expected.attributions, rtol=0, atol=2e-3)


@pytest.mark.parametrize("scale,flat", [(30.0, True), (0.5, False)])
def test_four_steps_are_the_trapezoid_over_the_model_gradients_at_each_node(scale, flat):
    """No refinement: the attributions are (x - x') times the trapezoid over alpha = k/4 of the
    gradient taken from the model here (at the start offset for alpha 0, and zero at a flat end)."""
    x = torch.ones(2, 4, dtype=torch.float64)
    x[1, 3] = 0.8
    model = saturating_linear(scale)
    results = attribute(backend(model, "softmax"), x, torch.zeros(2, 1, 4, dtype=torch.float64),
                      TargetSpec("index", 0), adaptive(steps=4, tolerance=1e-3))
    alphas = torch.tensor([start_offset(torch.float64), 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    weights = torch.tensor([0.5, 1, 1, 1, 0.5], dtype=torch.float64) / 4
    if flat:
        weights[[0, -1]] = 0
    points = (alphas.view(-1, 1, 1) * x).requires_grad_()  # [node, input, feature]
    (grads,) = torch.autograd.grad(torch.softmax(model(points), -1)[..., 0].sum(), points)
    expected = x * (weights.view(-1, 1, 1) * grads).sum(0)
    for result, row in zip(results, expected):
        assert result.gradient_evals == (3 if flat else 5)
        torch.testing.assert_close(result.attributions, row, rtol=1e-10, atol=1e-12)


def test_logits_never_skip_an_end():
    x = torch.ones(1, 4, dtype=torch.float64)
    (result,) = attribute(backend(saturating_linear(30.0), "logits"), x, torch.zeros(1, 1, 4, dtype=torch.float64),
                        TargetSpec("index", 0), adaptive(tolerance=1e-3))
    assert result.gradient_evals == result.steps + 1


def refinement_with(errors, bounds, norms, tolerance=0.01, map_tolerance=None):
    """A _Refinement whose intervals (all of path 0, each its own node pair) have the given errors
    and map bounds: what ``worst_intervals`` sees after a round."""
    count = len(errors)
    quad = Quadrature(Rule.adaptive, None, tolerance=tolerance, max_steps=512, map_tolerance=map_tolerance)
    refinement = adaptive_module._Refinement(torch.zeros(1, 1), torch.ones(1), torch.zeros(1), quad,
                                             buffers_module.MapBuffers())
    refinement.alpha = torch.linspace(0, 1, count + 1).double().numpy()
    nodes = torch.arange(count + 1).numpy()
    refinement.intervals = adaptive_module._Intervals(nodes[:-1] * 0, nodes[:-1].copy(), nodes[1:].copy())
    refinement.intervals.error[:] = errors
    refinement.intervals.bound[:] = bounds
    refinement.norms[:] = norms
    return refinement


@pytest.mark.parametrize("map_tolerance", [None, 0.1])
def test_the_last_round_bisects_only_as_many_intervals_as_it_needs(map_tolerance):
    # Budgets: completeness 0.01 (|F(x) - F(x')| = 1), map 0.1 x ||A|| = 0.1.
    # Twelve intervals: a round bisects ceil(0.34 x 12) = 5. Bisecting the worst (error 0.02,
    # expected to leave a quarter: 0.005 + 0.002 in all) is enough; the others bring nothing.
    errors = [0.02] + [0.0002] * 11
    bounds = [0.05] + [0.001] * 11
    chosen = refinement_with(errors, bounds, 1.0, map_tolerance=map_tolerance).worst_intervals()
    assert list(chosen) == [0]
    # Where no share of bisections is expected to be enough, the round bisects its whole share.
    chosen = refinement_with([0.02] * 12, bounds, 1.0, map_tolerance=map_tolerance).worst_intervals()
    assert len(chosen) == 5
    if map_tolerance is not None:  # the map's budget alone can ask for more: here the two worst bounds
        chosen = refinement_with(errors, [0.09, 0.09] + [0.001] * 10, 1.0, map_tolerance=map_tolerance).worst_intervals()
        assert sorted(chosen) == [0, 1]
