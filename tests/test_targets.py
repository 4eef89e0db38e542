"""Targets beyond one class, end to end: multi-label, one-output (regression), segmentation regions.

Each run is the real CLI on real PNG files and a real factory file; every figure a record states is
checked against a value computed here independently (the model's own forward in float64, captum's
IntegratedGradients with the same Gauss-Legendre nodes)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from click.testing import CliRunner
from PIL import Image

from igcli.cli.commands import main

STEPS = 32
MODELS = '''
import torch
from torch import nn

def multilabel():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    with torch.no_grad():
        net[-1].bias.copy_(torch.tensor([2.5, 1.5, 0.0, -1.0, -4.0]))
    return net

def regression():
    torch.manual_seed(4)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 1))

def segmenter():
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 3, 3, padding=1))
'''


def igcli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture
def job(tmp_path: Path):
    """A factory file and four seeded 8x8 grey PNGs; returns (run, models, images)."""
    (tmp_path / "models.py").write_text(MODELS)
    images = tmp_path / "images"
    images.mkdir()
    generator = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(generator.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(images / f"im{index}.png")
    namespace: dict = {}
    exec(MODELS, namespace)  # the same source the CLI imports, built here for the references

    def run(factory: str, score: str, target: str, name: str = "out", *extra: str):
        config = tmp_path / f"{name}.yaml"
        config.write_text(f"model: {{factory: models.py:{factory}, score: {score}}}\ninput: {{mode: L}}\n"
                          f"target: {target}\nmethod: gausslegendre\nsteps: {STEPS}\nchunk_inputs: 4\n"
                          "output: {attributions: npy, heatmap: {style: both}}\n")
        out = tmp_path / name
        return igcli("explain", "-c", config, images, "-o", out, *extra), out

    return run, namespace, images


def pixels(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255.0)[None, None]


def captum_ig(forward, x: torch.Tensor, **kwargs) -> np.ndarray:
    ig = IntegratedGradients(forward)
    return ig.attribute(x, torch.zeros_like(x), method="gausslegendre", n_steps=STEPS, **kwargs)[0].numpy()


def assert_record_numbers(row: dict, out: Path, f_input, f_baseline, reference: np.ndarray):
    f_input, f_baseline = float(f_input.detach()), float(f_baseline.detach())
    saved = np.load(out / row["outputs"]["attributions"])
    assert row["f_input"] == pytest.approx(f_input, rel=1e-5, abs=1e-6)
    assert row["f_baseline"] == pytest.approx(f_baseline, rel=1e-5, abs=1e-6)
    assert row["attribution_sum"] == pytest.approx(float(saved.astype(np.float64).sum()), rel=1e-5, abs=1e-6)
    assert row["attribution_sum"] == pytest.approx(f_input - f_baseline, rel=1e-3, abs=1e-5)
    assert np.abs(saved - reference).max() <= 1e-4 * max(np.abs(reference).max(), 1e-6)


def test_multilabel_gives_a_record_per_class_over_the_threshold(job):
    run, models, images = job
    result, out = run("multilabel", "sigmoid", "{above: 0.5}")
    assert result.exit_code == 0, result.output
    net, net32 = models["multilabel"]().double().eval(), models["multilabel"]().eval()
    rows = records(out)
    for path in sorted(images.glob("*.png")):
        x = pixels(path)
        probabilities = torch.sigmoid(net(x.double()))[0]
        expected = [c for c in probabilities.argsort(descending=True).tolist() if probabilities[c] > 0.5]
        mine = [r for r in rows if r["relpath"] == path.name]
        assert 2 <= len(expected) < 5  # the model makes this a real multi-label case
        assert [r["target"]["index"] for r in mine] == expected
        assert [r["target"]["rank"] for r in mine] == list(range(1, len(expected) + 1))
        at_black = torch.sigmoid(net(torch.zeros_like(x).double()))[0]
        for row in mine:
            c = row["target"]["index"]
            reference = captum_ig(lambda v: torch.sigmoid(net32(v)), x, target=c)
            assert_record_numbers(row, out, probabilities[c], at_black[c], reference)
            assert not any("target.above" in w for w in row["warnings"])
            assert (out / "heatmaps" / f"{path.stem}.top{row['target']['rank']}.png").exists()


def test_multilabel_with_no_class_over_explains_the_top_class_and_says_so(job):
    run, models, images = job
    result, out = run("multilabel", "sigmoid", "{above: 0.9999}")
    assert result.exit_code == 0, result.output
    net = models["multilabel"]().double().eval()
    rows = records(out)
    assert len(rows) == 4
    for row in rows:
        probabilities = torch.sigmoid(net(pixels(images / row["relpath"]).double()))[0]
        assert probabilities.max() <= 0.9999
        assert row["target"]["index"] == int(probabilities.argmax()) and row["target"]["rank"] == 1
        assert row["f_input"] == pytest.approx(float(probabilities.max().detach()), rel=1e-5)
        assert any(w.startswith("no class has F(input) over target.above=0.9999") for w in row["warnings"])


def test_one_output_model_refuses_softmax_and_explains_its_output(job):
    run, models, images = job
    result, out = run("regression", "softmax", "predicted", "refused")
    assert result.exit_code == 2
    assert "one output" in result.output and "model.score: logits" in result.output
    assert not (out / "results.jsonl").exists() or records(out) == []
    result, out = run("regression", "logits", "predicted")
    assert result.exit_code == 0, result.output
    net, net32 = models["regression"]().double().eval(), models["regression"]().eval()
    for row in records(out):
        x = pixels(images / row["relpath"])
        assert row["score"] == "output" and row["target"]["index"] == 0
        reference = captum_ig(net32, x, target=0)
        assert_record_numbers(row, out, net(x.double()), net(torch.zeros_like(x).double()), reference)


def region_sum(net, region: torch.Tensor):
    """F(v) = class 1's softmax over the classes, summed over ``region`` [8, 8]."""
    return lambda v: (torch.softmax(net(v), dim=1)[:, 1] * region.to(v.dtype)).flatten(1).sum(1)


def test_predicted_region_sums_the_class_score_over_each_inputs_own_region(job):
    run, models, images = job
    result, out = run("segmenter", "softmax", "{class: 1, region: predicted}")
    assert result.exit_code == 0, result.output
    net, net32 = models["segmenter"]().double().eval(), models["segmenter"]().eval()
    rows = records(out)
    assert len(rows) == 4
    regions = []
    for row in rows:
        x = pixels(images / row["relpath"])
        region = net(x.double()).argmax(1)[0] == 1  # fixed at the input, before integration
        regions.append(region)
        assert row["target"]["index"] == 1 and row["score"] == "softmax"
        assert row["region"] == {"source": "predicted", "class": 1, "pixels": int(region.sum()), "shape": [8, 8]}
        assert 0 < int(region.sum()) < 64
        f = region_sum(net, region)
        reference = captum_ig(region_sum(net32, region), x)
        assert_record_numbers(row, out, f(x.double()), f(torch.zeros_like(x).double()), reference)
        heatmap = np.asarray(Image.open(out / row["outputs"]["heatmap_bare"]))
        assert (heatmap == [0, 170, 0]).all(axis=2).any()  # the region's outline
    # Inputs explained together (chunks of 4, in pieces of 2 with two in flight), each with its own region.
    assert not torch.equal(regions[0], regions[1]) and not torch.equal(regions[2], regions[3])


def test_mask_file_region(job, tmp_path):
    run, models, images = job
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:6, 1:5] = 255
    Image.fromarray(mask, mode="L").save(tmp_path / "mask.png")
    result, out = run("segmenter", "logits", f"{{class: 2, region: {tmp_path / 'mask.png'}}}")
    assert result.exit_code == 0, result.output
    net, net32 = models["segmenter"]().double().eval(), models["segmenter"]().eval()
    region = torch.from_numpy(mask > 0)
    for row in records(out):
        x = pixels(images / row["relpath"])
        assert row["region"]["pixels"] == 16 and row["target"]["index"] == 2

        def f(v, module=net):
            return (module(v)[:, 2] * region.to(v.dtype)).flatten(1).sum(1)

        reference = captum_ig(lambda v: f(v, net32), x)
        assert_record_numbers(row, out, f(x.double()), f(torch.zeros_like(x).double()), reference)


def test_region_mask_of_the_wrong_size_is_one_line_and_exit_2(job, tmp_path):
    run, _, _ = job
    np.save(tmp_path / "mask.npy", np.ones((4, 4)))
    result, _ = run("segmenter", "softmax", f"{{class: 1, region: {tmp_path / 'mask.npy'}}}")
    assert result.exit_code == 2
    assert "mask.npy: the mask is [4, 4] pixels but the model's output is [8, 8]" in result.output


def test_target_keys_are_checked_with_a_hint(tmp_path):
    from igcli.config import load_config
    from igcli.errors import ConfigError

    config = tmp_path / "c.yaml"
    config.write_text("model: {path: m.pt2}\ntarget: {clas: 1, region: predicted}\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: unknown key 'target.clas'; did you mean 'target.class'\?"):
        load_config(config)
    config.write_text("model: {path: m.pt2}\ninput: {kind: text}\ntarget: {class: 1}\n")
    with pytest.raises(ConfigError, match="target.region applies to image inputs"):
        load_config(config)
    config.write_text("model: {path: m.pt2}\ntarget: {class: 1, region: masks/a.png}\n")
    assert load_config(config).target.region == tmp_path / "masks" / "a.png"  # from the config's folder


def test_region_target_on_the_onnxruntime_backend_is_one_line_before_anything_is_written(job, tmp_path):
    """An exported segmenter: model.backend onnxruntime cannot take a region head, and says so (exit 2,
    no output folder); model.backend torch explains the same .onnx file, against captum."""
    _, models, images = job
    net = models["segmenter"]().eval()
    path = tmp_path / "segmenter.onnx"
    torch.onnx.export(net, (torch.rand(2, 1, 8, 8),), str(path), dynamo=True, input_names=["image"],
                      output_names=["masks"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    common = ("--model", path, images, "--set", "model.score=softmax", "--set", "input.mode=L",
              "--set", "target={class: 1, region: predicted}", "--set", "method=gausslegendre", "--steps", STEPS)
    out = tmp_path / "ort"
    result = igcli("explain", *common, "-o", out, "--set", "model.backend=onnxruntime")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "target.region needs model.backend: torch" in result.stderr
    assert not out.exists()
    out = tmp_path / "torch"
    result = igcli("explain", *common, "-o", out, "--set", "model.backend=torch",
                   "--set", "output.attributions=npy")
    assert result.exit_code == 0, result.output
    net64 = models["segmenter"]().double().eval()
    for row in records(out):
        x = pixels(images / row["relpath"])
        region = torch.softmax(net64(x.double()), dim=1).argmax(dim=1)[0] == 1
        reference = captum_ig(region_sum(net, region), x)
        ours = np.load(out / row["outputs"]["attributions"])
        assert np.abs(ours.reshape(reference.shape) - reference).max() <= 1e-4 * np.abs(reference).max() + 1e-7
