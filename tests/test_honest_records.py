"""Records say how accurate they are: the default rule refines the map, `converged` holds exactly
what it claims, the step cap shows, baseline advice is judged against chance, and `auto` picks the
least informative constant baseline."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from igcli.attribution.adaptive import DEFAULT_MAP_TOLERANCE
from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule
from igcli.backends.base import ScoreKind
from igcli.cli.commands import main
from igcli.pipeline.common import baseline_warnings

from .nets import backend, small_cnn


def igcli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def cancelling_ramps() -> nn.Module:
    """F = ramp(2 x1) - ramp(2 x2) + x3 / 2, ramp(z) = relu(z - 0.6) - relu(z - 1.2). Along the
    path from 0 to (1, 1, 1) the two ramps rise together between alpha 0.3 and 0.6 and cancel in F:
    every interval's completeness holds from the first round, yet IG is (0.6, -0.6, 0.5), and the
    first round's trapezoid sees the ramps only at its node 0.5 (0.5, -0.5: 14% off in L2)."""
    hidden = nn.Linear(3, 5).double()
    out = nn.Linear(5, 2).double()
    with torch.no_grad():
        hidden.weight.copy_(torch.tensor([[2.0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 2, 0], [0, 0, 1]]))
        hidden.bias.copy_(torch.tensor([-0.6, -1.2, -0.6, -1.2, 0]))
        out.weight.copy_(torch.tensor([[1.0, -1, -1, 1, 0.5], [0, 0, 0, 0, 0]]))
        out.bias.zero_()

    class Ramps(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden, self.out = hidden, out

        def forward(self, x):
            h = self.hidden(x)
            return self.out(torch.cat([torch.relu(h[:, :4]), h[:, 4:]], dim=1))

    return Ramps()


def relative_l2(a: torch.Tensor, reference: torch.Tensor) -> float:
    return float((a - reference).norm() / reference.norm())


def test_the_default_gets_right_the_map_that_completeness_alone_gets_wrong():
    model, x, baseline = cancelling_ramps(), torch.ones(1, 3, dtype=torch.float64), torch.zeros(1, 1, 3, dtype=torch.float64)
    target = TargetSpec("index", 0)
    (reference,) = attribute(backend(model), x, baseline, target, Quadrature(Rule.gausslegendre, 1024))
    torch.testing.assert_close(reference.attributions, torch.tensor([0.6, -0.6, 0.5], dtype=torch.float64),
                               atol=1e-3, rtol=0)
    (alone,) = attribute(backend(model), x, baseline, target, Quadrature(Rule.adaptive, map_tolerance=None))
    (default,) = attribute(backend(model), x, baseline, target, Quadrature(Rule.adaptive))
    assert alone.rel_error <= 0.01 and alone.converged  # completeness holds: it cannot tell
    assert relative_l2(alone.attributions, reference.attributions) > 0.1
    assert default.converged and default.stopped_by == "tolerance"
    assert relative_l2(default.attributions, reference.attributions) <= default.map_error <= DEFAULT_MAP_TOLERANCE


def test_the_map_estimate_bounds_the_error_on_a_relu_cnn():
    """On a ReLU/max-pool CNN (kinks everywhere along its paths) every record's map error against
    the 1,024-step reference is within what the record claims, the map tolerance."""
    torch.manual_seed(3)
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    baseline = torch.zeros(6, 1, 1, 8, 8, dtype=torch.float64)
    runner = backend(small_cnn(seed=2), "softmax")
    references = attribute(runner, x, baseline, TargetSpec("predicted"), Quadrature(Rule.gausslegendre, 1024))
    for e, reference in zip(attribute(runner, x, baseline, TargetSpec("predicted"), Quadrature(Rule.adaptive)),
                            references, strict=True):
        assert e.converged and e.map_error <= DEFAULT_MAP_TOLERANCE
        assert relative_l2(e.attributions, reference.attributions) <= DEFAULT_MAP_TOLERANCE


class RandomReluNet(nn.Module):
    def __init__(self, seed: int, features: int, width: int, classes: int):
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.Sequential(nn.Linear(features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                    nn.Linear(width, classes)).double()

    def forward(self, x):
        return self.layers(x) * 3


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), width=st.integers(2, 12), classes=st.integers(2, 5),
       score=st.sampled_from(["softmax", "logits", "sigmoid"]), tolerance=st.sampled_from([1e-4, 1e-3, 0.01, 0.05]),
       map_tolerance=st.sampled_from([None, 0.01, DEFAULT_MAP_TOLERANCE]), max_steps=st.sampled_from([4, 6, 16, 512]),
       samples=st.integers(1, 2))
def test_no_record_claims_convergence_it_does_not_hold(seed, width, classes, score, tolerance, map_tolerance,
                                                       max_steps, samples):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    baselines = torch.randn(3, samples, 5, generator=generator, dtype=torch.float64) * 0.5
    quad = Quadrature(Rule.adaptive, tolerance=tolerance, max_steps=max_steps, map_tolerance=map_tolerance)
    for e in attribute(backend(RandomReluNet(seed, 5, width, classes), score), x, baselines, TargetSpec("predicted"), quad):
        if e.stopped_by == "max_steps":
            assert not e.converged and e.steps == max_steps
        if not e.converged:
            continue
        assert e.stopped_by == "tolerance" and e.steps <= max_steps
        if e.within_noise:
            assert abs(e.f_input - e.f_baseline) <= 1e-12 and e.abs_error <= 1e-12
        else:
            assert e.rel_error <= tolerance  # exactly the number the record prints
        if map_tolerance is not None:
            assert e.map_error <= map_tolerance


def test_the_step_cap_is_reported_and_strict_makes_it_exit_1(tmp_path):
    model, x, baseline = cancelling_ramps(), torch.ones(1, 3, dtype=torch.float64), torch.zeros(1, 1, 3, dtype=torch.float64)
    (capped,) = attribute(backend(model), x, baseline, TargetSpec("index", 0), Quadrature(Rule.adaptive, max_steps=5))
    assert (capped.stopped_by, capped.steps, capped.converged) == ("max_steps", 5, False)
    (fixed,) = attribute(backend(model), x, baseline, TargetSpec("index", 0), Quadrature(Rule.adaptive, steps=8))
    assert fixed.stopped_by == "fixed_steps"

    from .conftest import DIGITS_CONFIG, SAMPLE_DATA
    image = SAMPLE_DATA / "images" / "three_1442.png"
    result = igcli("explain", "-c", DIGITS_CONFIG, image, "-o", tmp_path / "a", "--set", "max_steps=5")
    assert result.exit_code == 0, result.output
    (record,) = records(tmp_path / "a")
    assert record["stopped_by"] == "max_steps" and not record["completeness"]["converged"]
    assert record["steps"] == 5 and record["completeness"]["map_error"] is not None
    totals = json.loads((tmp_path / "a" / "manifest.json").read_text())["totals"]
    assert (totals["not_converged"], totals["at_max_steps"]) == (1, 1)
    assert "1 not converged (1 at max_steps)" in result.stderr
    strict = igcli("explain", "-c", DIGITS_CONFIG, image, "-o", tmp_path / "b", "--set", "max_steps=5", "--strict")
    assert strict.exit_code == 1
    assert igcli("explain", "-c", DIGITS_CONFIG, image, "-o", tmp_path / "c", "--strict").exit_code == 0


def bias_free(classes: int, seed: int = 0) -> nn.Module:
    """Logits W x: 0 for every class at the zero baseline, so its softmax there is exactly chance."""
    torch.manual_seed(seed)
    return nn.Linear(6, classes, bias=False).double()


@pytest.mark.parametrize("score,classes", [("softmax", 4), ("softmax", 2), ("logits", 4), ("sigmoid", 3)])
def test_a_baseline_at_chance_gives_no_warning(score, classes):
    x, baseline = torch.randn(5, 6, dtype=torch.float64) * 2, torch.zeros(5, 1, 6, dtype=torch.float64)
    for e in attribute(backend(bias_free(classes), score), x, baseline, TargetSpec("predicted"), Quadrature(Rule.adaptive)):
        expected = 0.5 if score == "sigmoid" else 1 / classes
        assert e.baseline_probability == pytest.approx(expected, abs=1e-12)
        assert baseline_warnings(e, ScoreKind(score), 0.1) == []


def test_a_baseline_above_chance_warns_and_says_how_far():
    """A 2-class softmax whose baseline scores 0.486 (the issue's case) does not warn; one whose
    baseline scores 0.8 for the target does, and says by how much it is above chance."""
    model = bias_free(2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0, 0]]))
    x = torch.tensor([[3.0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    for start, probability, warns in [(-0.028, 0.486, False), (0.693, 0.8, True)]:
        baseline = torch.tensor([[[start, 0, 0, 0, 0, 0]]], dtype=torch.float64)
        (e,) = attribute(backend(model, "softmax"), x, baseline, TargetSpec("index", 0), Quadrature(Rule.adaptive))
        assert e.baseline_probability == pytest.approx(probability, abs=1e-3)
        warnings = baseline_warnings(e, ScoreKind.softmax, 0.1)
        assert bool(warnings) == warns
    assert "0.3 above chance (0.5, 1/2 classes" in warnings[0]


INK_MODEL = '''
import torch
from torch import nn

class Ink(nn.Module):
    """Class 0 scores how much ink (dark pixels) an image holds, class 1 the opposite."""
    def forward(self, x):
        ink = 8 * ((1 - x).mean(dim=(1, 2, 3)) - 0.05)
        return torch.stack([ink, -ink], dim=1)

def build_model():
    return Ink()
'''


def test_auto_picks_white_for_dark_strokes_on_light_paper(tmp_path):
    (tmp_path / "ink.py").write_text(INK_MODEL)
    pixels = np.full((24, 24, 3), 255, dtype=np.uint8)
    pixels[6:18, 10:13] = 20  # a dark stroke on white paper
    Image.fromarray(pixels).save(tmp_path / "stroke.png")
    config = tmp_path / "ink.yaml"
    config.write_text("model: {factory: ink.py:build_model, score: softmax}\nbaseline: {kind: auto}\n"
                      "output: {attributions: npy}\n")
    result = igcli("explain", "-c", config, tmp_path / "stroke.png", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    (record,) = records(tmp_path / "out")
    assert record["target"]["index"] == 0 and record["baseline"] == {"kind": "auto", "samples": 1, "seed": 0,
                                                                     "chosen": "white"}
    assert record["f_baseline"] == pytest.approx(1 / (1 + math.exp(0.8)), rel=1e-5)  # no ink: 8 * (0 - 0.05) = -0.4
    attributions = np.load(tmp_path / "out" / record["outputs"]["attributions"])
    stroke = np.zeros((24, 24), dtype=bool)
    stroke[6:18, 10:13] = True
    assert np.abs(attributions[:, stroke]).sum() > 0.99 * np.abs(attributions).sum()  # on the stroke, not the paper
    # For the opposite class the least ink is the most evidence: black scores it lowest.
    result = igcli("explain", "-c", config, tmp_path / "stroke.png", "-o", tmp_path / "out1", "--set", "target=1")
    assert records(tmp_path / "out1")[0]["baseline"]["chosen"] == "black"


def test_records_share_the_wall_time(tmp_path):
    """A record's seconds is its share of the run's wall time: they sum to the run's compute time
    (chunks in flight at once do not count their overlap twice), which the run's total contains."""
    from .conftest import DIGITS_CONFIG, SAMPLE_DATA
    result = igcli("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", tmp_path, "--set", "chunk_inputs=3")
    assert result.exit_code == 0, result.output
    rows = records(tmp_path)
    totals = json.loads((tmp_path / "manifest.json").read_text())["totals"]
    assert len(rows) == 12 and all(row["seconds"] > 0 for row in rows)
    assert sum(row["seconds"] for row in rows) == pytest.approx(totals["compute_seconds"], abs=2e-3)
    assert totals["compute_seconds"] <= totals["seconds"]
