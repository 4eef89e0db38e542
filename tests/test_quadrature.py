import numpy as np
import pytest

from igcli.attribution.quadrature import Rule, nodes, refine

RULES = list(Rule)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 50, 257])
def test_weights_sum_to_one_and_nodes_lie_in_unit_interval(rule, steps):
    table = nodes(rule, steps)
    assert table.weights.sum() == pytest.approx(1.0, abs=1e-14)
    assert np.all((table.alphas >= 0) & (table.alphas <= 1))
    assert np.all(np.diff(table.alphas) > 0)


def test_exact_tables():
    np.testing.assert_allclose(nodes(Rule.riemann_left, 4).alphas, [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(nodes(Rule.riemann_right, 4).alphas, [0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(nodes(Rule.riemann_middle, 4).alphas, [0.125, 0.375, 0.625, 0.875])
    trapezoid = nodes(Rule.riemann_trapezoid, 4)
    np.testing.assert_allclose(trapezoid.alphas, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(trapezoid.weights, [0.125, 0.25, 0.25, 0.25, 0.125])
    gauss = nodes(Rule.gausslegendre, 2)
    np.testing.assert_allclose(gauss.alphas, [0.5 - 0.5 / np.sqrt(3), 0.5 + 0.5 / np.sqrt(3)])
    np.testing.assert_allclose(gauss.weights, [0.5, 0.5])


def test_trapezoid_is_unbiased_unlike_captums():
    # captum's riemann_trapezoid with n points weights them 1/n with halved ends: sum (n-1)/n.
    n = 50
    captum_weights = np.full(n, 1 / n)
    captum_weights[[0, -1]] /= 2
    assert captum_weights.sum() == pytest.approx((n - 1) / n)
    assert nodes(Rule.riemann_trapezoid, n - 1).weights.sum() == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("rule,exact_degree", [
    (Rule.riemann_middle, 1), (Rule.riemann_trapezoid, 1), (Rule.gausslegendre, 2 * 5 - 1),
])
def test_polynomials_integrated_exactly_up_to_the_rules_degree(rule, exact_degree):
    table = nodes(rule, 5)
    for degree in range(exact_degree + 1):
        assert np.dot(table.weights, table.alphas ** degree) == pytest.approx(1 / (degree + 1), abs=1e-13)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("steps", [1, 4, 6])
def test_refinement_reproduces_the_finer_rule(rule, steps):
    def f(a):
        return np.exp(np.sin(3 * a)) + a ** 5

    coarse = nodes(rule, steps)
    step = refine(rule, steps)
    fine = nodes(rule, step.steps)
    refined = step.keep * np.dot(coarse.weights, f(coarse.alphas)) + np.dot(step.new.weights, f(step.new.alphas))
    assert refined == pytest.approx(np.dot(fine.weights, f(fine.alphas)), rel=1e-13)


@pytest.mark.parametrize("rule,new_points", [
    (Rule.riemann_trapezoid, lambda m: m), (Rule.riemann_left, lambda m: m),
    (Rule.riemann_right, lambda m: m), (Rule.riemann_middle, lambda m: 2 * m),
])
def test_nested_rules_only_add_new_points(rule, new_points):
    step = refine(rule, 8)
    assert step.keep > 0
    assert len(step.new.alphas) == new_points(8)


def test_gauss_legendre_does_not_nest_so_refinement_starts_over():
    step = refine(Rule.gausslegendre, 8)
    assert step.keep == 0 and len(step.new.alphas) == 16


def test_tables_are_shared_and_read_only():
    # nodes() is cached, so a caller writing into a table would change every later run's rule.
    table = nodes(Rule.gausslegendre, 7)
    assert nodes(Rule.gausslegendre, 7) is table
    with pytest.raises(ValueError):
        table.alphas[0] = 0.5
    with pytest.raises(ValueError):
        table.weights *= 2
