"""Config values that validate must run: non-finite floats, endless sample counts, huge resizes and
a word for off as a layer name are one-line config errors (exit 2) naming the key, where it was set
and the fix; a blur of any sigma runs in memory like the image's and gives the fully blurred image."""
from __future__ import annotations

import json
import subprocess
import sys
import typing

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import BaseModel
from scipy import ndimage

from igcli.attribution.baselines import BaselineKind, BaselinePlan, Normalization, gaussian_blur, make_baselines
from igcli.config import Config

from .conftest import DIGITS_CONFIG, REPO, SAMPLE_DATA, one_error_line
from .conftest import invoke as igcli

EIGHT = SAMPLE_DATA / "images" / "eight_1438.png"
FAST = ("--steps", "8", "--device", "cpu", "-q")

# Every float key, as --set gives it (a section whose other keys are required comes whole).
FLOAT_KEYS = {
    "tolerance": "tolerance={}",
    "map_tolerance": "map_tolerance={}",
    "input.mean": "input.mean=[{}]",
    "input.std": "input.std=[{}]",
    "baseline.value": "baseline.value={}",
    "baseline.sigma": "baseline={{kind: blur, sigma: {}}}",
    "baseline.warn_margin": "baseline.warn_margin={}",
    "target.above": "target={{above: {}}}",
    "output.heatmap.clip_percentile": "output.heatmap.clip_percentile={}",
    "output.heatmap.opacity": "output.heatmap.opacity={}",
    "smoothgrad.sigma": "smoothgrad={{samples: 2, sigma: {}}}",
    "faithfulness.blur_sigma": "faithfulness.blur_sigma={}",
    "faithfulness.noise": "faithfulness.noise={}",
    "faithfulness.radius": "faithfulness.radius={}",
}


def float_keys(section: type[BaseModel] = Config, prefix: str = "") -> set[str]:
    """The dotted keys of every field that takes a float, walking sections and unions of sections."""
    found = set()
    for name, field in section.model_fields.items():
        key = prefix + (field.alias or name)
        members = set(typing.get_args(field.annotation)) | {field.annotation}
        for member in members:
            if member is float or typing.get_origin(member) is tuple and float in typing.get_args(member):
                found.add(key)
            if isinstance(member, type) and issubclass(member, BaseModel):
                # union forms (target: {above}) sit at the union's own key
                inner = float_keys(member, key + ".")
                found |= inner
    return found


def test_the_non_finite_cases_cover_every_float_key():
    assert float_keys() == set(FLOAT_KEYS)


@pytest.mark.parametrize("key", sorted(FLOAT_KEYS))
@pytest.mark.parametrize("value,shown", [(".inf", "inf"), (".nan", "nan"), ("-.inf", "-inf")])
def test_a_non_finite_float_is_a_config_error_naming_its_key(key, value, shown):
    result = igcli("validate-config", DIGITS_CONFIG, "--set", FLOAT_KEYS[key].format(value))
    line = one_error_line(result)
    assert result.exit_code == 2
    named = f"{key}.0" if key in ("input.mean", "input.std") else key
    assert line.startswith(f"igcli: error: --set: '{named}': Input should be a finite number (got {shown})"), line


def test_an_infinite_tolerance_stops_explain_before_it_writes(tmp_path):
    # It used to run, then fail every record on "Out of range float" (exit 1, an empty results.jsonl).
    out = tmp_path / "out"
    result = igcli("explain", "-c", DIGITS_CONFIG, EIGHT, "-o", out, *FAST, "--set", "tolerance=.inf")
    assert result.exit_code == 2 and "'tolerance': Input should be a finite number (got inf)" in one_error_line(result)
    assert not out.exists()


@pytest.mark.parametrize("text,key", [
    ("baseline.samples=1000000000", "baseline.samples"),
    ("baseline.samples=1.0e+9", "baseline.samples"),  # a YAML float
    ("baseline.samples=1e9", "baseline.samples"),  # YAML 1.1 text
    ("smoothgrad={samples: 100000000.0, sigma: 0.1}", "smoothgrad.samples"),
    ("faithfulness.samples=1e9", "faithfulness.samples"),
    ("faithfulness.samples=1025", "faithfulness.samples"),
])
def test_sample_counts_are_capped_at_1024(text, key):
    result = igcli("validate-config", DIGITS_CONFIG, "--set", text)
    assert result.exit_code == 2 and one_error_line(result).startswith(f"igcli: error: --set: '{key}': at most 1024: ")


def test_the_samples_cap_names_its_yaml_line_and_1024_itself_passes(tmp_path):
    config = tmp_path / "cfg.yaml"
    text = DIGITS_CONFIG.read_text().replace("../sample_data", str(SAMPLE_DATA))
    config.write_text(text + "smoothgrad:\n  samples: 1e8\n  sigma: 0.1\n")
    line_number = len(text.splitlines()) + 2
    result = igcli("validate-config", config)
    assert result.exit_code == 2
    assert one_error_line(result).startswith(f"igcli: error: {config}:{line_number}: 'smoothgrad.samples': at most 1024")
    config.write_text(text + "smoothgrad: {samples: 1.024e+3, sigma: 0.1}\n")
    assert igcli("validate-config", config, "--set", "baseline.samples=1e3").exit_code == 0


def mirror_period_mean(pixels: np.ndarray) -> np.ndarray:
    """The limit of a Gaussian blur with reflect padding as sigma grows: the mean over one period of
    the endlessly mirrored image (a b c d c b | a ...), where the edge rows and columns count half."""
    weights = []
    for size in pixels.shape[-2:]:
        w = np.full(size, 2.0)
        w[[0, -1]] = 1.0
        weights.append(w / w.sum())
    return np.einsum("chw,h,w->c", pixels, *weights)[:, None, None] * np.ones_like(pixels)


def sample_pixels() -> torch.Tensor:
    with Image.open(EIGHT) as image:
        array = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    return torch.from_numpy(array)[None]


def test_a_blur_baseline_of_sigma_1e9_is_the_fully_blurred_image():
    # It used to build a kernel of 6e9 taps: 23 GB and the OOM killer.
    pixels = sample_pixels()
    norm = Normalization((0.0,), (1.0,))
    plan = BaselinePlan(BaselineKind.blur, samples=2, sigma=1e9)
    huge = make_baselines(plan, pixels, norm, "eight.png")
    assert huge.shape == (2, 1, 32, 32)
    feasible = gaussian_blur(pixels, 1e5)
    torch.testing.assert_close(huge[0], feasible, rtol=0, atol=1e-6)
    expected = mirror_period_mean(pixels.double().numpy())
    np.testing.assert_allclose(huge[1].double().numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.5, 2.0, 3.0, 7.0, 40.0])
def test_a_blur_matches_scipy_on_a_mirrored_image_below_and_beyond_the_image_size(sigma):
    # 7 x 12 pixels: along an axis a kernel cut at 3 sigma fits, igcli's kernel is scipy's with
    # truncate=3; beyond, the exact Gaussian of the mirrored image (scipy's cut at 12 sigma: exp(-72) past it).
    pixels = np.random.default_rng(3).random((3, 7, 12))
    expected = pixels
    for axis in (2, 1):
        truncate = 3.0 if 3 * sigma <= pixels.shape[axis] - 1 else 12.0
        expected = ndimage.gaussian_filter1d(expected, sigma, axis=axis, mode="mirror", truncate=truncate)
    got = gaussian_blur(torch.from_numpy(pixels), sigma).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_explain_with_a_blur_baseline_of_sigma_1e9_scores_the_blurred_image(tmp_path):
    out = tmp_path / "out"
    result = igcli("explain", "-c", DIGITS_CONFIG, EIGHT, "-o", out, *FAST, "--set", "baseline={kind: blur, sigma: 1e9}")
    assert result.exit_code == 0, result.stderr
    [record] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    sys.path.insert(0, str(SAMPLE_DATA / "models"))
    try:
        from digits_cnn import build_model
    finally:
        sys.path.pop(0)
    model = build_model().eval()
    model.load_state_dict(torch.load(SAMPLE_DATA / "models" / "digits_cnn_state.pt"))
    blurred = torch.from_numpy(mirror_period_mean(sample_pixels().double().numpy())).float()
    with torch.no_grad():
        probabilities = model(((blurred - 0.5) / 0.5)[None]).softmax(1)[0]
    assert record["f_baseline"] == pytest.approx(probabilities[record["target"]["index"]].item(), abs=1e-5)


@pytest.mark.parametrize("text,key,says", [
    ("input.resize=[20000, 20000]", "input.resize", "20000x20000 pixels, over Pillow's decompression-bomb limit"),
    ("input.resize=10000", "input.resize", "at least 10000x10000 pixels, over Pillow's decompression-bomb limit"),
    ("input.crop=[10000, 9000]", "input.crop", "10000x9000 pixels, over Pillow's decompression-bomb limit"),
])
def test_a_resize_or_crop_over_the_pixel_limit_is_a_config_error(tmp_path, text, key, says):
    out = tmp_path / "out"
    result = igcli("explain", "-c", DIGITS_CONFIG, EIGHT, "-o", out, *FAST, "--set", text)
    line = one_error_line(result)
    assert result.exit_code == 2 and line.startswith(f"igcli: error: --set: '{key}': {says}") and "[224, 224]" in line
    assert not out.exists()
    assert igcli("validate-config", DIGITS_CONFIG, "--set", "input.resize=[9000, 9000]").exit_code == 0


PROBE_WITHOUT_MEMORY = """
import resource, sys
from igcli.cli.commands import main
import torch  # the address space torch needs is taken before the cap
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + 300 * 2**20, resource.RLIM_INFINITY))
main(sys.argv[1:])
"""


def test_a_probe_input_too_large_for_memory_is_a_one_line_model_error(tmp_path):
    # Under the pixel limit, 9000x9000 zeros for the probe's batch of 2 (648 MB) are over the 300 MB left.
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", PROBE_WITHOUT_MEMORY, "explain", "-c", str(DIGITS_CONFIG),
                             str(EIGHT), "-o", str(out), *FAST, "--set", "input.resize=[9000, 9000]"],
                            cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
                                 "PYTHONPATH": str(REPO)})
    assert result.returncode == 3, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("igcli: error: model rejected an input shaped [1, 1, 9000, 9000] (") and "memory" in line


@pytest.mark.parametrize("word", ["none", "None", "disabled"])
def test_a_word_for_off_as_a_layer_name_says_null_turns_layer_off(word):
    result = igcli("validate-config", DIGITS_CONFIG, "--set", f"layer={word}")
    assert result.exit_code == 2
    assert one_error_line(result) == (f"igcli: error: --set: layer '{word}': no such module in the model; modules: 0, 1, "
                                      "2, 3, 4, 5, 6, 7, 8, 9; null (or leaving the key out) turns layer off")


def test_a_missing_layer_names_its_yaml_line_in_validate_config_and_explain(tmp_path):
    config = tmp_path / "cfg.yaml"
    text = DIGITS_CONFIG.read_text().replace("../sample_data", str(SAMPLE_DATA))
    config.write_text(text + "layer: conv9\n")
    where = f"{config}:{len(text.splitlines()) + 1}"
    for args in (("validate-config", config), ("explain", "-c", config, EIGHT, "-o", tmp_path / "out", *FAST)):
        result = igcli(*args)
        assert result.exit_code == 2
        assert one_error_line(result).startswith(f"igcli: error: {where}: layer 'conv9': no such module"), args
    assert not (tmp_path / "out").exists()
