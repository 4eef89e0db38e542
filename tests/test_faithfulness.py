"""Faithfulness metrics (attribution/faithfulness.py) against closed forms and captum.metrics."""
import pytest
import torch
from torch import nn

from igcli.attribution.faithfulness import (
    deletion_insertion,
    gaussian_perturbations,
    infidelity,
    max_sensitivity,
    pixel_units,
    token_units,
    uniform_perturbations,
    unit_scores,
)

from .nets import backend, integrated_gradients, small_cnn


def linear_image_model(seed: int = 0) -> nn.Module:
    """F = w . x (logits of one class against zero): IG from a black baseline is exactly w * x."""
    torch.manual_seed(seed)
    linear = nn.Linear(1 * 4 * 4, 2).double()
    with torch.no_grad():
        linear.bias.zero_()
        linear.weight[1].zero_()
    return nn.Sequential(nn.Flatten(), linear)


def test_deletion_curve_of_a_linear_model_matches_a_hand_computation():
    model = linear_image_model()
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fill = torch.zeros_like(x)
    contributions = (model[1].weight[0].detach() * x.flatten()).view(1, 16)
    units, expand = pixel_units((1, 4, 4))
    deletion, insertion = deletion_insertion(backend(model), x, fill, contributions, torch.tensor([0]), expand,
                                             steps=16)
    # By hand: after k pixels are deleted, F is the sum of the 16 - k smallest contributions.
    ordered = contributions[0].sort(descending=True).values
    curve = torch.tensor([ordered[k:].sum() for k in range(17)], dtype=torch.float64)
    fractions = torch.arange(17, dtype=torch.float64) / 16
    expected = ((curve[1:] + curve[:-1]) / 2 * fractions.diff()).sum()
    assert deletion.item() == pytest.approx(expected.item(), rel=1e-12)
    inserted = torch.tensor([ordered[:k].sum() for k in range(17)], dtype=torch.float64)
    assert insertion.item() == pytest.approx(((inserted[1:] + inserted[:-1]) / 2 / 16).sum().item(), rel=1e-12)


def test_ig_order_beats_a_random_order_on_deletion_and_insertion():
    model = small_cnn(seed=3, classes=4)
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64, generator=generator)
    baseline = torch.zeros_like(x)
    found = integrated_gradients(model, x, baseline, target=2, score="softmax", steps=32)
    maps = torch.stack([e.attributions for e in found])
    _, expand = pixel_units((1, 8, 8))
    runner, targets = backend(model, "softmax"), torch.full((6,), 2)
    ig_del, ig_ins = deletion_insertion(runner, x, baseline, unit_scores(maps, "pixel"), targets, expand, steps=16)
    random_scores = torch.rand(6, 64, dtype=torch.float64, generator=generator)
    rnd_del, rnd_ins = deletion_insertion(runner, x, baseline, random_scores, targets, expand, steps=16)
    assert ig_del.mean() < rnd_del.mean() and ig_ins.mean() > rnd_ins.mean()
    # The curve's ends are F(x) and F(fill): both AUCs lie between the two extremes of F on it.
    assert torch.all((ig_del >= 0) & (ig_del <= 1) & (ig_ins >= 0) & (ig_ins <= 1))


def test_token_units_move_whole_embeddings():
    mask = torch.tensor([[True, False, True]])
    _, expand = token_units((3, 4))
    assert expand(mask).shape == (1, 3, 4) and expand(mask)[0, 1].sum() == 0 and expand(mask)[0, 2].all()


def test_infidelity_matches_captum():
    metrics = pytest.importorskip("captum.metrics")
    model = small_cnn(seed=1, classes=3)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1, 2])
    maps = torch.stack([integrated_gradients(model, x[i:i + 1], torch.zeros_like(x[i:i + 1]), target=int(t),
                                             score="softmax", steps=16)[0].attributions for i, t in enumerate(targets)])
    noise = torch.stack([gaussian_perturbations((1, 8, 8), 7, 0.1, seed) for seed in range(3)])
    ours = infidelity(backend(model, "softmax"), x, maps, targets, noise)

    def perturb(inputs):  # captum repeats each input 7 times, in input order
        flat = noise.flatten(0, 1)
        return flat, inputs - flat

    softmax = lambda inputs: torch.softmax(model(inputs), -1)  # noqa: E731
    theirs = metrics.infidelity(softmax, perturb, x, maps, target=targets, n_perturb_samples=7)
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-10, atol=1e-14)


def test_max_sensitivity_matches_captum():
    metrics = pytest.importorskip("captum.metrics")
    attr = pytest.importorskip("captum.attr")
    model = small_cnn(seed=2, classes=3)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ig = attr.IntegratedGradients(model)

    def explain_fn(rows):
        if isinstance(rows, tuple):  # captum passes its inputs as a tuple, and wants one back
            return (explain_fn(rows[0]),)
        return ig.attribute(rows, baselines=torch.zeros_like(rows), target=1, n_steps=16)

    noise = torch.stack([uniform_perturbations((1, 8, 8), 5, 0.02, seed) for seed in range(2)])
    ours = max_sensitivity(explain_fn, x, explain_fn(x), noise)
    flat = noise.flatten(0, 1)
    theirs = metrics.sensitivity_max(explain_fn, x, perturb_func=lambda inputs, radius: inputs + flat,
                                     n_perturb_samples=5)
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-10, atol=1e-14)
    assert torch.all(ours > 0)
