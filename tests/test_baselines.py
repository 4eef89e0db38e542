import pytest
import torch

from igcli.attribution.baselines import (
    BaselineKind,
    BaselinePlan,
    Normalization,
    auto_candidates,
    gaussian_blur,
    make_baselines,
)

NORM = Normalization((0.5,), (0.25,))
PIXELS = torch.rand(1, 12, 10, generator=torch.Generator().manual_seed(0))


def build(kind, **kwargs):
    return make_baselines(BaselinePlan(BaselineKind(kind), **kwargs), PIXELS, NORM, "a/b.png")


@pytest.mark.parametrize("kind,pixel_value", [("black", 0.0), ("white", 1.0)])
def test_constant_kinds_are_normalised_like_inputs(kind, pixel_value):
    torch.testing.assert_close(build(kind), torch.full((1, 1, 12, 10), (pixel_value - 0.5) / 0.25))
    torch.testing.assert_close(build("constant", value=0.75), torch.full((1, 1, 12, 10), 1.0))


def test_zeros_are_in_model_space():
    assert torch.equal(build("zeros", samples=2), torch.zeros(2, 1, 12, 10))


def test_random_kinds_are_seeded_per_input_and_differ_between_samples():
    first, again = build("uniform", samples=3, seed=4), build("uniform", samples=3, seed=4)
    assert torch.equal(first, again)
    assert not torch.equal(first[0], first[1])
    other_input = make_baselines(BaselinePlan(BaselineKind.uniform, 3, 4), PIXELS, NORM, "a/c.png")
    assert not torch.equal(first, other_input)
    noisy = build("gaussian", samples=2, sigma=0.05)
    pixels = noisy * 0.25 + 0.5
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert (pixels - PIXELS).abs().mean() < 0.05


def test_blur_keeps_constants_and_smooths_edges():
    flat = torch.full((2, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    edge = torch.zeros(1, 9, 9)
    edge[:, :, 5:] = 1
    blurred = gaussian_blur(edge, 1.5)
    assert 0 < float(blurred[0, 4, 4]) < 1 and float(blurred.sum()) == pytest.approx(float(edge.sum()), rel=0.05)


def test_file_baseline_is_used_as_given():
    fixed = torch.randn(1, 12, 10)
    plan = BaselinePlan(BaselineKind.file, samples=2, fixed=fixed)
    result = make_baselines(plan, PIXELS, NORM, "x")
    assert torch.equal(result[1], fixed)


@pytest.mark.parametrize("kind", list(BaselineKind))
def test_kinds_said_to_be_the_same_for_every_input_are(kind):
    """The image job makes such baselines once per chunk; a kind wrongly marked would give every
    input the first input's baselines."""
    if kind.value in ("pad", "token"):
        pytest.skip("a text kind")
    plan = BaselinePlan(kind, samples=2, sigma=1.0, fixed=torch.rand(1, 12, 10))
    other = torch.rand(1, 12, 10, generator=torch.Generator().manual_seed(1))
    if kind is BaselineKind.auto:  # chosen per input with the model, among candidates made from its pixels
        same = torch.equal(auto_candidates(PIXELS, NORM), auto_candidates(other, NORM))
    else:
        same = torch.equal(make_baselines(plan, PIXELS, NORM, "a/b.png"), make_baselines(plan, other, NORM, "c/d.png"))
    assert same == plan.same_for_every_input
