"""Path methods and smoothing (docs/methods.md) against their reference implementations: captum's
NoiseTunnel and LayerIntegratedGradients, PAIR saliency's BlurIG; completeness recomputed from the
model; batch sizes 1 and 64 alike; the CLI end to end."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients, NoiseTunnel
from click.testing import CliRunner
from scipy import ndimage

from igcli.attribution.engine import Quadrature, TargetSpec
from igcli.attribution.guided import GuidedOptions, explain_guided
from igcli.attribution.layer import explain_layer, layer_map_to_input
from igcli.attribution.paths import BlurPath, explain_path
from igcli.attribution.quadrature import Rule
from igcli.attribution.smooth import add_noise, explain_smoothed
from igcli.backends.batching import BatchSize
from igcli.backends.layer import LayerBackend
from igcli.backends.loading import load_model
from igcli.cli.commands import main
from igcli.errors import ConfigError

from .conftest import DIGITS_CONFIG, SAMPLE_DATA
from .nets import backend, small_cnn

TARGETS = [4, 0, 2]


def inputs(seed: int = 7):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 3, 8, 8, generator=generator, dtype=torch.float64)
    return x, torch.rand(3, 3, 8, 8, generator=generator, dtype=torch.float64)


# SmoothGrad -------------------------------------------------------------------------------------

def test_smoothgrad_matches_captum_noise_tunnel_with_the_same_seed():
    model = small_cnn(channels=3, classes=5)
    x, baselines = inputs()
    torch.manual_seed(11)
    theirs = NoiseTunnel(IntegratedGradients(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=4, stdevs=0.2, baselines=baselines, target=TARGETS, n_steps=32,
        method="gausslegendre")
    noisy = add_noise(x, 4, 0.2, torch.Generator().manual_seed(11))
    for n, target in enumerate(TARGETS):
        result = explain_smoothed(backend(model), x[n:n + 1], noisy[4 * n:4 * n + 4], baselines[n:n + 1, None],
                                  TargetSpec("index", target), Quadrature(Rule.gausslegendre, 32), BatchSize(64))
        (ours,) = result.explanations
        torch.testing.assert_close(ours.attributions, theirs[n], rtol=1e-6, atol=1e-9)
        assert result.f_clean == [pytest.approx(float(model(x[n:n + 1])[0, target]), rel=1e-12)]


def test_smoothgrad_completeness_of_the_average():
    model = small_cnn(channels=3, classes=5)
    x, baselines = inputs(3)
    noisy = add_noise(x, 5, 0.3, torch.Generator().manual_seed(2))
    result = explain_smoothed(backend(model), x, noisy, baselines[:, None], TargetSpec("predicted"),
                              Quadrature(Rule.adaptive, max_steps=48), BatchSize(64))
    for n, one in enumerate(result.explanations):
        # The average's change of F, from the model itself: the mean over the copies, less F(x').
        with torch.no_grad():
            change = float(model(noisy[5 * n:5 * n + 5])[:, one.target].mean() - model(baselines[n:n + 1])[0, one.target])
        assert one.target == int(model(x[n:n + 1]).argmax())  # chosen on the clean input
        assert one.f_input - one.f_baseline == pytest.approx(change, rel=1e-9)
        assert abs(float(one.attributions.sum()) - change) == pytest.approx(one.abs_error, rel=1e-6, abs=1e-15)
        # Each copy within its tolerance need not make the average so (their changes of F may
        # cancel): converged says whether the average's own error is.
        assert not one.converged or one.abs_error <= 0.01 * abs(change)
        assert one.abs_error <= 0.05 * abs(change)


def one_and_sixty_four(run):
    """``run(batch)``'s explanations at batch sizes 1 and 64, which must agree."""
    for one, many in zip(run(BatchSize(1)), run(BatchSize(64))):
        assert one.gradient_evals == many.gradient_evals
        # float32 convolutions round differently by batch size; float64 ones nearly alike.
        scale = (1e-9 if one.attributions.dtype == torch.float64 else 1e-5) * float(many.attributions.abs().max())
        torch.testing.assert_close(one.attributions, many.attributions, rtol=0, atol=scale)


FEW_STEPS = Quadrature(Rule.adaptive, max_steps=12)  # batch size 1 is slow: few points


def test_smoothgrad_batch_invariance():
    model = small_cnn(channels=3, classes=5)
    x, baselines = inputs(3)
    noisy = add_noise(x[:1], 2, 0.3, torch.Generator().manual_seed(2))
    one_and_sixty_four(lambda batch: explain_smoothed(backend(model), x[:1], noisy, baselines[:1, None],
                                                      TargetSpec("predicted"), FEW_STEPS, batch).explanations)


# Layer IG ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer", ["2", "4"])
def test_layer_ig_matches_captum(layer):
    model = small_cnn(channels=3, classes=5)
    x, baselines = inputs()
    theirs = LayerIntegratedGradients(model, dict(model.named_modules())[layer]).attribute(
        x, baselines=baselines, target=TARGETS, n_steps=40, method="gausslegendre")
    runner = LayerBackend(model, layer, "logits", (3, 8, 8))
    for n, target in enumerate(TARGETS):
        (ours,) = explain_layer(runner, x[n:n + 1], baselines[n:n + 1, None], TargetSpec("index", target),
                                Quadrature(Rule.gausslegendre, 40), BatchSize(64))
        assert ours.attributions.shape == theirs[n].shape
        assert float((ours.attributions - theirs[n]).abs().max() / theirs[n].abs().max()) <= 1e-5


def test_layer_ig_on_the_sample_model_matches_captum_in_float32():
    from sample_data.models.digits_cnn import build_model  # noqa: PLC0415 -- the shipped architecture

    model = build_model()
    model.load_state_dict(torch.load(SAMPLE_DATA / "models" / "digits_cnn_state.pt"))
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    baselines = torch.full_like(x, -1.0)
    target = model(x).argmax(1)
    forward = lambda batch: torch.softmax(model(batch), dim=1)  # noqa: E731
    theirs = LayerIntegratedGradients(forward, model[3]).attribute(x, baselines=baselines, target=target,
                                                                  n_steps=50, method="gausslegendre")
    ours = explain_layer(LayerBackend(model, "3", "softmax", (1, 32, 32)), x, baselines[:, None],
                         TargetSpec("predicted"), Quadrature(Rule.gausslegendre, 50), BatchSize(64))
    for n, e in enumerate(ours):
        assert float((e.attributions - theirs[n]).abs().max() / theirs[n].abs().max()) <= 1e-5


def test_layer_ig_completeness_at_the_layer_and_batch_invariance():
    model = small_cnn(channels=3, classes=5)
    x, baselines = inputs(5)
    runner = LayerBackend(model, "3", "softmax", (3, 8, 8))
    one_and_sixty_four(lambda batch: explain_layer(runner, x[:1], baselines[:1, None], TargetSpec("predicted"),
                                                   FEW_STEPS, batch))
    explanations = explain_layer(runner, x, baselines[:, None], TargetSpec("predicted"), Quadrature(Rule.adaptive),
                                 BatchSize(64))
    with torch.no_grad():
        f_inputs, f_baselines = torch.softmax(model(x), 1), torch.softmax(model(baselines), 1)
    for n, one in enumerate(explanations):
        change = float(f_inputs[n, one.target] - f_baselines[n, one.target])
        assert one.attributions.shape == (6, 4, 4)  # the second conv: 6 channels, 4x4
        assert abs(float(one.attributions.sum()) - change) <= 0.01 * abs(change)
    heat = layer_map_to_input(torch.ones(4, 2, 2), (8, 8))
    assert heat.shape == (1, 8, 8) and torch.allclose(heat, torch.full((1, 8, 8), 4.0))


def test_an_unknown_layer_is_named_with_the_nearest_module():
    from torch import nn

    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Conv2d(1, 2, 3)))
    model.add_module("head", nn.Flatten())
    with pytest.raises(ConfigError, match="layer 'featurs': no such module.*did you mean 'features'"):
        LayerBackend(model, "featurs", "logits", (1, 5, 5))


# Blur IG ----------------------------------------------------------------------------------------

def saliency_model_call(model):
    import saliency.core as saliency  # noqa: PLC0415 -- a test dependency (pyproject's test extra)

    def call(batch, call_model_args=None, expected_keys=None):
        points = torch.from_numpy(np.asarray(batch)).permute(0, 3, 1, 2).requires_grad_(True)
        (grads,) = torch.autograd.grad(model(points)[:, call_model_args["target"]].sum(), points)
        return {saliency.base.INPUT_OUTPUT_GRADIENTS: grads.permute(0, 2, 3, 1).numpy()}

    return call


def test_blur_ig_reproduces_pair_saliency():
    import saliency.core as saliency  # noqa: PLC0415

    model = small_cnn(channels=3, classes=5)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for n in range(2):
        target = int(model(x[n:n + 1]).argmax())
        theirs = saliency.BlurIG().GetMask(x[n].permute(1, 2, 0).numpy(), saliency_model_call(model),
                                           {"target": target}, max_sigma=5, steps=20, batch_size=7)
        # The reference's nodes, sigma = i * max / steps for i < steps, are alpha = 1 - i / steps: riemann_right.
        path = BlurPath(x[n:n + 1], 5.0, grad_step=0.01, truncate=4.0)
        (ours,) = explain_path(backend(model), path, x[n:n + 1], TargetSpec("index", target),
                               Quadrature(Rule.riemann_right, 20), BatchSize(64))
        torch.testing.assert_close(ours.attributions, torch.from_numpy(theirs).permute(2, 0, 1), rtol=1e-9, atol=1e-12)


def test_blur_path_velocity_is_the_derivative_of_its_points():
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    path, h = BlurPath(x, 5.0), 1e-6
    for alpha in (0.05, 0.5, 0.9):
        at = torch.tensor([alpha], dtype=torch.float64)
        _, velocity = path.at(torch.tensor([0]), at)
        ahead, behind = path.at(torch.tensor([0]), at + h)[0], path.at(torch.tensor([0]), at - h)[0]
        torch.testing.assert_close(velocity, (ahead - behind) / (2 * h), rtol=1e-6, atol=1e-8)


def test_blur_ig_completeness_against_the_blurred_start_and_batch_invariance():
    model = small_cnn(channels=3, classes=5)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    one_and_sixty_four(lambda batch: explain_path(backend(model, "softmax"), BlurPath(x[:1], 5.0), x[:1],
                                                  TargetSpec("predicted"), FEW_STEPS, batch))
    explanations = explain_path(backend(model, "softmax"), BlurPath(x, 5.0), x, TargetSpec("predicted"),
                                Quadrature(Rule.adaptive), BatchSize(64))
    # The start, blurred by scipy: untruncated kernels span 8 sigma.
    start = np.stack([ndimage.gaussian_filter(image.numpy(), sigma=[0, 5.0, 5.0], mode="constant", truncate=8.0)
                      for image in x])
    with torch.no_grad():
        f_start, f_input = torch.softmax(model(torch.from_numpy(start)), 1), torch.softmax(model(x), 1)
    for n, one in enumerate(explanations):
        assert one.f_baseline == pytest.approx(float(f_start[n, one.target]), rel=1e-9)
        change = float(f_input[n, one.target] - f_start[n, one.target])
        assert abs(float(one.attributions.sum()) - change) <= 0.01 * abs(change) and one.converged


# Guided IG --------------------------------------------------------------------------------------

@pytest.fixture
def numpy_quantile_interpolation(monkeypatch):
    """saliency 0.2.1 calls np.quantile(..., interpolation=...), which numpy 2 renamed ``method``."""
    quantile = np.quantile
    monkeypatch.setattr(np, "quantile", lambda a, q, interpolation="linear", **kw: quantile(a, q, method=interpolation, **kw))


def test_guided_ig_reproduces_pair_saliency(numpy_quantile_interpolation):
    import saliency.core as saliency  # noqa: PLC0415

    model = small_cnn(channels=3, classes=5)
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 8, 8, generator=generator, dtype=torch.float64)
    baselines = 0.2 * torch.rand(2, 3, 8, 8, generator=generator, dtype=torch.float64)
    theirs = [saliency.GuidedIG().GetMask(x[n].permute(1, 2, 0).numpy(), saliency_model_call(model),
                                          {"target": int(model(x[n:n + 1]).argmax())},
                                          x_baseline=baselines[n].permute(1, 2, 0).numpy(), x_steps=30,
                                          fraction=0.25, max_dist=0.1) for n in range(2)]
    # All paths at once, in batches; the reference's left sums are rule riemann_left.
    ours = explain_guided(backend(model), x, baselines, TargetSpec("predicted"), Quadrature(Rule.riemann_left, 30),
                          BatchSize(64), GuidedOptions(0.25, 0.1))
    for e, reference in zip(ours, theirs):
        torch.testing.assert_close(e.attributions, torch.from_numpy(reference).permute(2, 0, 1), rtol=1e-9, atol=1e-14)


def sample_digits(count: int) -> torch.Tensor:
    """The first ``count`` sample scans as the sample job feeds them: 32x32, (p - 0.5) / 0.5."""
    from PIL import Image  # noqa: PLC0415

    paths = sorted((SAMPLE_DATA / "images").glob("*.png"))[:count]
    pixels = [np.asarray(Image.open(p).convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255
              for p in paths]
    return (torch.from_numpy(np.stack(pixels))[:, None] - 0.5) / 0.5


def test_guided_ig_auto_steps_meet_completeness_and_batch_sizes_agree():
    runner = load_model(SAMPLE_DATA / "models" / "digits_cnn_state.pt",
                        str(SAMPLE_DATA / "models" / "digits_cnn.py") + ":build_model", "softmax", torch.device("cpu"))
    x = sample_digits(3)
    baselines = torch.full_like(x, -1.0)  # black
    one_and_sixty_four(lambda batch: explain_guided(runner, x[:1], baselines[:1], TargetSpec("predicted"),
                                                    Quadrature(Rule.adaptive, 6), batch))
    explanations = explain_guided(runner, x, baselines, TargetSpec("predicted"), Quadrature(Rule.adaptive),
                                  BatchSize(64))
    f_inputs, f_baselines = runner.scores(x), runner.scores(baselines)
    for n, e in enumerate(explanations):
        change = float(f_inputs[n, e.target]) - float(f_baselines[n, e.target])
        assert e.converged and abs(float(e.attributions.double().sum()) - change) <= 0.01 * abs(change)
        assert e.gradient_evals >= e.steps + 1  # the trapezoid's extra gradient, and any shorter attempts


# The CLI ----------------------------------------------------------------------------------------

def explain_two_digits(tmp_path: Path, name: str, *settings: str):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for stem in ("eight_1438", "three_1442"):
        (images / f"{stem}.png").write_bytes((SAMPLE_DATA / "images" / f"{stem}.png").read_bytes())
    out = tmp_path / name
    args = ["explain", "-c", str(DIGITS_CONFIG), str(images), "-o", str(out), "-q"]
    for setting in settings:
        args += ["--set", setting]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()] if out.exists() else []
    return result, rows, out


def test_cli_each_method_end_to_end(tmp_path):
    _, plain, _ = explain_two_digits(tmp_path, "plain")
    cases = {"smoothgrad": ("smoothgrad={samples: 3, sigma: 0.1, seed: 1}",),
             "path": ("path=blur",), "layer": ("layer=3",), "guided": ("path=guided",)}
    for key, settings in cases.items():
        result, rows, out = explain_two_digits(tmp_path, key, *settings)
        assert result.exit_code == 0, result.output
        for row, base in zip(rows, plain):
            assert set(row) - set(base) == {"path" if key == "guided" else key}  # new keys only with a method
            assert row["completeness"]["rel_error"] <= 0.01 and row["completeness"]["converged"]
            assert row["attribution_sum"] == pytest.approx(row["f_input"] - row["f_baseline"], rel=0.011)
            saved = np.load(out / row["outputs"]["attributions"])
            assert saved.sum() == pytest.approx(row["attribution_sum"], rel=1e-4)
            assert (out / row["outputs"]["heatmap"]).exists()
            if key == "layer":
                assert saved.shape == (32, 16, 16) and row["layer"] == {"name": "3", "shape": [32, 16, 16]}
            elif key == "path":
                assert row["baseline"]["kind"] == "blurred" and row["path"]["kind"] == "blur"
            elif key == "guided":
                assert row["baseline"]["kind"] == "black" and row["path"]["kind"] == "guided"
            else:
                assert row["smoothgrad"]["f_input_clean"] == pytest.approx(base["f_input"], rel=1e-6)
                assert row["gradient_evals"] > base["gradient_evals"]
        assert json.loads((out / "manifest.json").read_text())["config"]["path" if key == "guided" else key]
    assert "path" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())["config"]


@pytest.mark.parametrize("settings, message", [
    (("layer=fetures",), "layer 'fetures': no such module"),
    (("smoothgrad={samples: 2}",), "missing required key 'smoothgrad.sigma'"),
    (("path=blur", "layer=3"), "set one of path and layer"),
    (("pth=blur",), "did you mean 'path'"),
    (("layer=3", f"model.path={SAMPLE_DATA / 'models' / 'digits_cnn.ts'}"), "takes no hooks at a layer"),
    (("layer=3", f"model.path={SAMPLE_DATA / 'models' / 'digits_cnn.pt2'}"), "takes no hooks at a layer"),
])
def test_cli_method_config_errors_exit_2(tmp_path, settings, message):
    result, rows, out = explain_two_digits(tmp_path, "out", *settings)
    assert result.exit_code == 2 and message in result.output and rows == []
    assert not out.exists()  # a config error: nothing ran, nothing written
    assert "(got {" not in result.output  # a rule across keys names them, not the whole config
