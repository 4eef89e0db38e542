"""End to end through the command line, on the committed sample model and images."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from igcli import __version__
from igcli.cli.commands import main

from .conftest import DEVICE_AUTO, DIGITS_CONFIG, SAMPLE_DATA

SAMPLE_NAMES = sorted(p.stem for p in (SAMPLE_DATA / "images").glob("*.png"))


def igcli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_explain_sample_data_end_to_end(sample_tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    heap_settings = []  # igcli explain fixes malloc's thresholds for its process (tests/test_heap.py)
    monkeypatch.setattr("igcli.runtime.heap.set_up_malloc", lambda how: heap_settings.append(how))
    result = igcli("explain", "--config", DIGITS_CONFIG, sample_tree, "-o", out)
    assert result.exit_code == 0, result.output
    assert heap_settings == ["mallopt"]  # in this process; the igcli program starts itself again
    rows = records(out)
    assert [Path(r["relpath"]).stem for r in rows] == SAMPLE_NAMES
    for row in rows:
        stem = Path(row["relpath"]).stem
        assert row["error"] is None and row["score"] == "softmax" and row["rule"] == "adaptive"
        assert row["completeness"]["converged"] and row["completeness"]["rel_error"] <= 0.03
        assert row["attribution_sum"] == pytest.approx(row["f_input"] - row["f_baseline"], rel=0.031)
        assert row["target"]["label"] == stem.split("_")[0]  # the sample model gets every one right
        assert Image.open(out / "heatmaps" / f"{stem}.png").size == (256, 256)
        saved = np.load(out / "attributions" / f"{stem}.npy")
        assert saved.shape == (1, 32, 32) and saved.sum() == pytest.approx(row["attribution_sum"], rel=1e-4)
        assert json.loads((out / "records" / f"{stem}.json").read_text())["outputs"] == row["outputs"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["records"] == len(SAMPLE_NAMES) and manifest["totals"]["failed"] == 0
    steps = [row["steps"] for row in rows]
    assert len(set(steps)) > 1  # the adaptive rule: the totals below are not one value repeated
    assert manifest["totals"]["mean_steps"] == pytest.approx(sum(steps) / len(steps), rel=1e-12)
    assert manifest["totals"]["max_steps"] == max(steps)
    assert manifest["totals"]["max_rel_error"] == max(row["completeness"]["rel_error"] for row in rows)
    assert manifest["config"]["method"] == "adaptive" and manifest["device"] == DEVICE_AUTO
    assert manifest["runtime"] == "torch"
    assert "max relative completeness error" in result.stderr


def test_a_corrupt_image_fails_alone(sample_tree, tmp_path):
    (sample_tree / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (sample_tree / "sub").mkdir()
    (sample_tree / "sub" / "text.png").write_text("just text")
    out = tmp_path / "out"
    result = igcli("explain", "-c", DIGITS_CONFIG, sample_tree, "-o", out, "--steps", 16)
    assert result.exit_code == 1
    rows = {r["relpath"]: r for r in records(out)}
    expected_order = sorted(["broken.png"] + [f"{name}.png" for name in SAMPLE_NAMES]) + ["sub/text.png"]
    assert list(rows) == expected_order  # failures keep their place among the inputs
    assert rows["broken.png"]["error"]["type"] == "InputError"
    assert "sub/text.png" in rows and "not an image" in rows["sub/text.png"]["error"]["message"]
    assert "broken.png" in result.stderr
    good = [r for r in rows.values() if r["error"] is None]
    assert len(good) == len(SAMPLE_NAMES)
    assert all((out / r["outputs"]["heatmap"]).exists() for r in good)
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert totals["failed"] == 2 and totals["inputs"] == len(SAMPLE_NAMES) + 2
    assert totals["mean_steps"] == 16 and totals["max_steps"] == 16  # failures have no steps to count


def test_unknown_config_key_exits_2_naming_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(DIGITS_CONFIG.read_text().replace("tolerance:", "tolerence:"))
    result = igcli("explain", "-c", config, SAMPLE_DATA / "images", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "unknown key 'tolerence'; did you mean 'tolerance'?" in result.stderr
    assert not (tmp_path / "out").exists()


def test_jsonl_to_stdout_for_pipelines(tmp_path):
    result = igcli("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images" / "three_1442.png", "--jsonl", "-",
                   "--steps", 16, "--method", "gausslegendre", "-q")
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["target"] == {"index": 3, "label": "three", "rank": None}
    assert row["steps"] == 16 and row["gradient_evals"] == 16 and row["rule"] == "gausslegendre"
    assert result.stderr == ""


def test_top_k_label_targets_and_several_baselines(tmp_path):
    out = tmp_path / "out"
    image = SAMPLE_DATA / "images" / "three_1442.png"
    result = igcli("explain", "-c", DIGITS_CONFIG, image, "-o", out, "--set", "target.top_k=2",
                   "--set", "baseline.kind=uniform", "--set", "baseline.samples=3", "--steps", 8)
    assert result.exit_code == 0, result.output
    first, second = records(out)
    assert (first["target"]["rank"], second["target"]["rank"]) == (1, 2)
    # Over all three baselines: 9 nodes each, less any saturated end the softmax took no gradient at.
    assert 3 * 7 <= first["gradient_evals"] <= 3 * 9 and first["baseline"]["samples"] == 3
    assert (out / "heatmaps" / "three_1442.top1.png").exists() and (out / "heatmaps" / "three_1442.top2.png").exists()
    result = igcli("explain", "-c", DIGITS_CONFIG, image, "-o", out, "--set", "target=eight", "--steps", 8)
    assert records(out)[0]["target"]["index"] == 8


def test_uninformative_baseline_warning(tmp_path):
    """The sample CNN calls a black image a four (0.97): explaining a four against black warns and
    says how far above chance the baseline is; a one (0.03 at black) does not warn."""
    images = [SAMPLE_DATA / "images" / "four_1462.png", SAMPLE_DATA / "images" / "one_1449.png"]
    result = igcli("explain", "-c", DIGITS_CONFIG, *images, "-o", tmp_path, "--steps", 8)
    assert result.exit_code == 0
    four, one = records(tmp_path)
    assert "not uninformative" in four["warnings"][0] and "0.87 above chance (0.1, 1/10 classes" in four["warnings"][0]
    assert one["warnings"] == []
    assert "1 record(s) have a baseline that is not uninformative" in result.stderr


def test_model_that_cannot_take_the_input_exits_3_before_any_work(tmp_path):
    result = igcli("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", tmp_path / "out",
                   "--set", "input.resize=[16, 16]")
    assert result.exit_code == 3
    assert "model rejected an input shaped [1, 1, 16, 16]" in result.stderr
    assert not (tmp_path / "out" / "heatmaps").exists()


@pytest.mark.parametrize("args,code,message", [
    (["--device", "tpu"], 2, "device must be auto, cpu, cuda or cuda:N"),
    (["--set", "target=seventeen"], 2, "not among the 10 labels"),
    (["--set", "target=12"], 2, "classes 0..9"),
    (["--model", "missing.pt2"], 3, "model file not found"),
])
def test_usage_errors(tmp_path, args, code, message):
    result = igcli("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", tmp_path / "out", *args)
    assert result.exit_code == code and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_output_folder_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = igcli("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", blocker / "out")
    assert result.exit_code == 2 and "not writable" in result.stderr


def test_no_inputs_found(tmp_path):
    result = igcli("explain", "-c", DIGITS_CONFIG, tmp_path, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "no inputs found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_validate_config_prints_the_resolved_config(tmp_path):
    result = igcli("validate-config", DIGITS_CONFIG, "--set", "steps=32")
    assert result.exit_code == 0 and "steps: 32" in result.stdout and "\ntolerance: 0.01\n" in result.stdout and "map_tolerance: 0.07" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {path: x.pt2}\nbaseline: {kind: blak}\n")
    result = igcli("validate-config", bad)
    assert result.exit_code == 2 and f"{bad}:2: 'baseline.kind'" in result.stderr


@pytest.mark.parametrize("command", [[], ["explain"], ["validate-config"], ["env"]])
def test_every_command_has_help(command):
    result = igcli(*command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output


def test_version_and_env():
    assert __version__ in igcli("--version").output
    env = igcli("env").output
    assert "torch:" in env and "device auto:" in env


NAN_MODEL = """
import torch

from tests.nets import NanGradientWhenBright


class NanWhenBright(torch.nn.Module):
    '''Broken for very bright inputs, as a model might be: NaN logits, or finite ones with NaN gradients.'''

    def __init__(self, broken):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(32 * 32, 10)
        self.broken = broken

    def forward(self, x):
        if self.broken == "gradients":
            return self.linear(NanGradientWhenBright.apply(x, 0.9).flatten(1))
        logits = self.linear(x.flatten(1))
        bright = x.flatten(1).mean(1, keepdim=True) > 0.9
        return torch.where(bright, torch.full_like(logits, float("nan")), logits)


def outputs():
    return NanWhenBright("outputs")


def gradients():
    return NanWhenBright("gradients")
"""


@pytest.mark.parametrize("broken", ["outputs", "gradients"])
def test_a_model_output_of_nan_fails_that_input_alone(tmp_path, broken):
    (tmp_path / "nan_model.py").write_text(NAN_MODEL)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (32, 32), 255).save(images / "white.png")
    (images / "digit.png").write_bytes((SAMPLE_DATA / "images" / "three_1442.png").read_bytes())
    result = igcli("explain", "-c", DIGITS_CONFIG, images, "-o", tmp_path / "out", "--steps", 8,
                   "--set", "model.path=null", "--set", f"model.factory={tmp_path / 'nan_model.py'}:{broken}")
    assert result.exit_code == 1
    digit, white = records(tmp_path / "out")
    assert digit["error"] is None and digit["completeness"]["rel_error"] < 0.01
    assert white["error"]["type"] == "ModelError" and "NaN" in white["error"]["message"]


def test_file_baselines_npy_and_image(tmp_path):
    image = SAMPLE_DATA / "images" / "seven_1443.png"
    black = tmp_path / "black.npy"
    np.save(black, np.full((1, 32, 32), -1.0, dtype=np.float32))  # black, in model space
    runs = {}
    for name, extra in {"black": ["--set", "baseline.kind=black"],
                        "npy": ["--set", "baseline.kind=file", "--set", f"baseline.path={black}"],
                        "image": ["--set", "baseline.kind=file", "--set", f"baseline.path={image}"]}.items():
        out = tmp_path / name
        result = igcli("explain", "-c", DIGITS_CONFIG, image, "-o", out, "--steps", 16, *extra)
        assert result.exit_code == 0, result.output
        runs[name] = records(out)[0]
    assert runs["npy"]["attribution_sum"] == pytest.approx(runs["black"]["attribution_sum"], rel=1e-6)
    assert runs["image"]["attribution_sum"] == pytest.approx(0.0, abs=1e-9)  # the input as its own baseline
    np.save(black, np.zeros((3, 8, 8), dtype=np.float32))
    result = igcli("explain", "-c", DIGITS_CONFIG, image, "-o", tmp_path / "bad", "--set", "baseline.kind=file",
                   "--set", f"baseline.path={black}")
    assert result.exit_code == 2 and "baseline.path holds shape [3, 8, 8]" in result.stderr


@pytest.mark.parametrize("style,files", [("both", {"seven_1443.png", "seven_1443.bare.png"}),
                                         ("bare", {"seven_1443.png"}), ("none", set())])
def test_heatmap_styles(tmp_path, style, files):
    result = igcli("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images" / "seven_1443.png", "-o", tmp_path,
                   "--steps", 8, "--set", f"output.heatmap.style={style}", "--set", "baseline.kind=blur")
    assert result.exit_code == 0, result.output
    heatmaps = tmp_path / "heatmaps"
    assert {p.name for p in heatmaps.iterdir()} == files if files else not heatmaps.exists()
