"""XRAI regions (regions: xrai, docs/methods.md) against PAIR saliency's XRAI on real images and
maps; batch sizes 1 and 64 alike; the CLI end to end over each path method; refusals; hostile names."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from PIL import Image
from torch import nn

from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule
from igcli.attribution.xrai import channel_max, dilated_masks, rank_regions
from igcli.backends.batching import BatchSize
from igcli.backends.loading import load_model
from igcli.cli.commands import main
from igcli.config import OutputSection
from igcli.data.segments import felzenszwalb_segmentations
from igcli.names import name_key, safe_relpath
from igcli.results.naming import OutputNames
from igcli.results.records import Sample, output_stem
from igcli.results.regions_view import band_counts
from igcli.results.writer import output_files

from .conftest import DIGITS_CONFIG, REPO, SAMPLE_DATA
from .nets import backend
from .test_hostile import PATHS, assert_distinct_and_inside

saliency = pytest.importorskip("saliency.core")  # the reference (pyproject's test extra)


def digits(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample scans as the sample job feeds them: pixels [N, 1, 32, 32] in [0, 1], and (p - 0.5) / 0.5."""
    pixels = np.stack([np.asarray(Image.open(SAMPLE_DATA / "images" / f"{name}.png").convert("L")
                                  .resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255 for name in names])
    pixels = torch.from_numpy(pixels)[:, None]
    return pixels, (pixels - 0.5) / 0.5


def sample_model():
    return load_model(SAMPLE_DATA / "models" / "digits_cnn_state.pt",
                      str(SAMPLE_DATA / "models" / "digits_cnn.py") + ":build_model", "softmax", torch.device("cpu"))


def theirs(pixels: np.ndarray, attributions: np.ndarray):
    """saliency's XRAI of a [C, H, W] map over the image ``pixels`` [C, H, W]: (ranks, gain per pixel)."""
    out = saliency.XRAI().GetMaskWithDetails(np.moveaxis(pixels, 0, -1), None,
                                             base_attribution=np.moveaxis(attributions, 0, -1),
                                             extra_parameters=saliency.XRAIParameters(return_xrai_segments=True))
    return out.segments, out.attribution_mask


def ours(pixels: np.ndarray, attributions: np.ndarray):
    return rank_regions(channel_max(attributions), dilated_masks(felzenszwalb_segmentations(pixels)))


def assert_same_regions(mine, pixels: np.ndarray, attributions: np.ndarray) -> None:
    ranks, gains = theirs(pixels, attributions)
    np.testing.assert_array_equal(mine.ranks, ranks)
    # The reference averages in the map's dtype (float32 here), igcli in float64.
    np.testing.assert_allclose(mine.gains[mine.ranks - 1], gains, rtol=1e-5, atol=1e-9 * np.abs(gains).max())


def test_parity_with_saliency_xrai_on_the_sample_model_and_digits():
    pixels, x = digits(["eight_1438", "three_1442"])
    explanations = attribute(sample_model(), x, torch.full_like(x, -1.0)[:, None], TargetSpec("predicted"),
                             Quadrature(Rule.adaptive), BatchSize(64))
    for e in explanations:
        attributions, image = e.attributions.numpy(), pixels[e.input_index].numpy()
        assert (attributions == 0).mean() > 0.3  # black background, black baseline: exact zeros, tied gains
        mine = ours(image, attributions)
        assert_same_regions(mine, image, attributions)
        assert mine.count >= 5 and mine.areas.sum() == pytest.approx(1.0)


def rgb_cnn() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 6)).double()


def test_parity_with_saliency_xrai_on_a_photo_in_colour():
    from skimage import data  # noqa: PLC0415 -- a real photo shipped in scikit-image's wheel

    cat = np.asarray(Image.fromarray(data.chelsea()).resize((72, 56), Image.BILINEAR), dtype=np.float64) / 255
    pixels = torch.from_numpy(cat).permute(2, 0, 1)[None]
    (e,) = attribute(backend(rgb_cnn()), pixels, torch.zeros_like(pixels)[:, None], TargetSpec("predicted"),
                     Quadrature(Rule.gausslegendre, 16), BatchSize(64))
    attributions, image = e.attributions.numpy(), pixels[0].numpy()
    mine = ours(image, attributions)
    assert_same_regions(mine, image, attributions)
    assert mine.ranks.shape == (56, 72) and mine.count >= 5


def test_region_selection_matches_the_reference_on_given_segments_with_ties():
    """Random segmentations and a map with tied values: the reference's own selection on our masks,
    and our dilation against scikit-image's."""
    from skimage.morphology import dilation, disk  # noqa: PLC0415

    generator = np.random.default_rng(3)
    labels = [np.kron(generator.integers(0, k, (6, 5)), np.ones((7, 9), dtype=int)) for k in (3, 5, 9)]
    masks = dilated_masks(labels, 2)
    reference = [dilation(seg == label, footprint=disk(2)) for seg in labels for label in np.unique(seg)]
    np.testing.assert_array_equal(masks, np.stack(reference))
    attributions = np.round(generator.normal(size=(42, 45)), 1) * (generator.random((42, 45)) < 0.5)
    mine = rank_regions(attributions, masks, min_new_pixels=20)
    gains, ranks = saliency.XRAI._xrai(attributions, list(masks), min_pixel_diff=20)
    np.testing.assert_array_equal(mine.ranks, ranks)
    np.testing.assert_array_equal(mine.gains[mine.ranks - 1], gains)  # float64: the same sums, to the bit
    assert band_counts(np.array([0.05, 0.2, 0.75]), (0.1, 0.25, 0.3)) == [2, 2, 3]


def test_batch_sizes_1_and_64_give_the_same_regions():
    pixels, x = digits(["five_1444", "two_1458"])
    runner = sample_model()
    masks = [dilated_masks(felzenszwalb_segmentations(image.numpy())) for image in pixels]
    found = []
    for size in (1, 64):
        explanations = attribute(runner, x, torch.full_like(x, -1.0)[:, None], TargetSpec("predicted"),
                                 Quadrature(Rule.adaptive, 8), BatchSize(size))
        found.append([rank_regions(channel_max(e.attributions.numpy()), masks[e.input_index]) for e in explanations])
    for one, many in zip(*found):
        np.testing.assert_array_equal(one.ranks, many.ranks)
        np.testing.assert_allclose(one.gains, many.gains, rtol=1e-5)


# The CLI ----------------------------------------------------------------------------------------

def explain(tmp_path: Path, name: str, images: Path, *settings: str, config: Path = DIGITS_CONFIG):
    out = tmp_path / name
    args = ["explain", "-c", str(config), str(images), "-o", str(out), "-q"]
    for setting in settings:
        args += ["--set", setting]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()] if out.exists() else []
    return result, rows, out


def copy_digits(folder: Path, names: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in names.items():
        (folder / name).write_bytes((SAMPLE_DATA / "images" / f"{source}.png").read_bytes())
    return folder


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("method", [(), ("path=guided", "steps=16"), ("path=blur",),
                                    ("smoothgrad={samples: 2, sigma: 0.1}",)])
def test_cli_writes_the_rank_mask_overlay_and_record(tmp_path, method):
    images = copy_digits(tmp_path / "images", {"four_1462.png": "four_1462"})
    result, rows, out = explain(tmp_path, "out", images, "regions=xrai", *method)
    assert result.exit_code == 0, result.output
    for row in rows:
        regions = row["regions"]
        assert regions["method"] == "xrai" and regions["segmentation"]["scales"] == [50, 100, 150, 250, 500, 1200]
        assert regions["listed"] == regions["count"] == len(regions["ranked"]) >= 5
        ranked = regions["ranked"]
        assert [r["rank"] for r in ranked] == list(range(1, regions["count"] + 1))
        assert sum(r["area"] for r in ranked) == pytest.approx(1.0)
        assert sum(r["attribution"] for r in ranked) == pytest.approx(row["attribution_sum"], rel=1e-5)
        # The mask: the model's input size, one grey level per rank from 255 down, each level the rank's area.
        mask = read_png(out / row["outputs"]["regions_mask"])
        assert mask.shape == (32, 32, 3)
        levels, counts = np.unique(mask[..., 0], return_counts=True)
        assert len(levels) == regions["count"] and levels.max() == 255
        np.testing.assert_allclose(counts[::-1] / mask[..., 0].size, [r["area"] for r in ranked])
        # The overlay: the top band's regions red, whatever covers no band dimmed.
        overlay = read_png(out / row["outputs"]["regions_overlay"])
        assert overlay.shape == (256, 256, 3)
        top = regions["bands"][0]
        assert top["regions"] >= 1 and top["area"] >= 0.1
        enlarged = np.kron(mask[..., 0] == 255, np.ones((8, 8), dtype=bool))
        assert (overlay[enlarged][:, 0] > overlay[enlarged][:, 2]).all()  # red over rank 1
        # The same regions from the saved map, by the reference.
        pixels, _ = digits([Path(row["relpath"]).stem])
        saved = np.load(out / row["outputs"]["attributions"])
        ranks, _ = theirs(pixels[0].numpy(), saved)
        np.testing.assert_array_equal(np.unique(mask[..., 0], return_inverse=True)[1].reshape(32, 32),
                                      regions["count"] - ranks)
    plain = json.loads((out / "manifest.json").read_text())["config"]
    assert plain["regions"] == "xrai"


def test_cli_batch_sizes_give_the_same_mask_files(tmp_path):
    images = copy_digits(tmp_path / "images", {"six_1446.png": "six_1446"})
    masks = []
    for size in (1, 64):
        result, rows, out = explain(tmp_path, f"out{size}", images, "regions=xrai", f"batch_size={size}",
                                    "steps=8", "method=gausslegendre")
        assert result.exit_code == 0, result.output
        masks.append([(out / row["outputs"]["regions_mask"]).read_bytes() for row in rows])
    assert masks[0] == masks[1]


@pytest.mark.parametrize("settings, message", [
    (("regions=xrai", "layer=3"), "regions ranks regions of a map shaped like the input"),
    (("regions=xrai", "target={class: 1, region: predicted}"), "regions applies to image inputs"),
    (("regons=xrai",), "did you mean 'regions'"),
    (("regions=xria",), "'regions'"),
])
def test_cli_refusals_exit_2_with_one_line(tmp_path, settings, message):
    images = copy_digits(tmp_path / "images", {"a.png": "one_1449"})
    result, rows, out = explain(tmp_path, "out", images, *settings)
    assert result.exit_code == 2 and message in result.output and not out.exists()
    assert len(result.output.strip().splitlines()) == 1


def test_cli_refuses_text_inputs(tmp_path):
    result, _, out = explain(tmp_path, "out", SAMPLE_DATA / "texts", "regions=xrai",
                             config=REPO / "configs" / "questions.yaml")
    assert result.exit_code == 2 and "regions applies to image inputs" in result.output and not out.exists()
    assert len(result.output.strip().splitlines()) == 1


def test_cli_without_scikit_image_says_how_to_install_it(tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name == "skimage" or name.startswith("skimage.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage raises ImportError
    images = copy_digits(tmp_path / "images", {"a.png": "one_1449"})
    result, _, out = explain(tmp_path, "out", images, "regions=xrai")
    assert result.exit_code == 2 and "pip install 'igcli[regions]'" in result.output and not out.exists()
    assert len(result.output.strip().splitlines()) == 1


def test_cli_hostile_names_keep_region_files_apart_and_inside_out(tmp_path):
    names = {"a.png": "zero_1437", "a.overlay.png": "one_1449", "evil\u202egnp.png": "three_1442",
             "n" * 246 + ".png": "four_1462"}
    images = copy_digits(tmp_path / "images", names)
    (images / "regions").mkdir()
    (images / "regions" / "a.png").write_bytes((images / "a.png").read_bytes())
    result, rows, out = explain(tmp_path, "out", images, "regions=xrai", "steps=8")
    assert result.exit_code == 0, result.output
    assert len(rows) == 5 and all(row["error"] is None for row in rows)
    assert not any("is taken by" in warning for row in rows for warning in row["warnings"])
    written = [row["outputs"][key] for row in rows for key in ("regions_mask", "regions_overlay")]
    assert len({name_key(path) for path in written}) == len(written)
    for path in written:
        assert (out / path).resolve().is_relative_to(out.resolve()) and (out / path).is_file()
        assert "\u202e" not in path


@pytest.mark.parametrize("target", [(), ("target={top_k: 2}",)])
def test_cli_regions_never_rename_an_input(tmp_path, target):
    # a.png's overlay and a.overlay.png's mask, or a.png's top-1 and a.top1.png, must not meet:
    # a run with regions and one without name every input alike, so `igcli diff` can match them.
    images = copy_digits(tmp_path / "images", {"a.png": "zero_1437", "a.overlay.png": "one_1449",
                                               "a.top1.png": "three_1442"})
    relpaths = {}
    for regions in ((), ("regions=xrai",)):
        result, rows, out = explain(tmp_path, f"out{len(regions)}", images, "steps=8", *target, *regions)
        assert result.exit_code == 0, result.output
        assert not any(row["warnings"] for row in rows)
        relpaths[regions] = sorted((row["input"], row["relpath"]) for row in rows)
        written = [row["outputs"][key] for row in rows for key in row["outputs"]]
        assert len({name_key(path) for path in written}) == len(written)
        for row in rows if regions else []:
            name = row["outputs"]["record"].removeprefix("records/").removesuffix(".json")
            assert row["outputs"]["regions_mask"] == f"regions/ranks/{name}.png"
            assert row["outputs"]["regions_overlay"] == f"regions/overlays/{name}.png"
    assert relpaths[()] == relpaths[("regions=xrai",)]
    assert sorted({relpath for _, relpath in relpaths[()]}) == ["a.overlay.png", "a.png", "a.top1.png"]


def test_cli_a_zero_map_ranks_no_regions_and_says_so(tmp_path):
    # An all-black image with the black baseline: the input is the baseline, so the map is exactly 0.
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (32, 32)).save(images / "black.png")
    result, rows, out = explain(tmp_path, "out", images, "regions=xrai", "steps=8")
    assert result.exit_code == 0, result.output
    (row,) = rows
    assert not np.load(out / row["outputs"]["attributions"]).any()
    regions = row["regions"]
    assert regions["count"] == regions["listed"] == 0 and regions["ranked"] == []
    assert [(band["regions"], band["area"]) for band in regions["bands"]] == [(0, 0.0)] * 3
    assert any("map is zero" in warning and "not ranked" in warning for warning in row["warnings"])
    assert not read_png(out / row["outputs"]["regions_mask"]).any()  # no pixel has a rank
    overlay = read_png(out / row["outputs"]["regions_overlay"])
    assert (overlay == overlay[..., :1]).all()  # grey only: no band tinted


def test_cli_region_images_are_sized_as_heatmaps_whatever_the_input_size(tmp_path):
    # docs/methods.md: the ranks at the size of the image the model saw, the overlay as large as the heatmap.
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (20, 3000), dtype=np.uint8)).save(images / "wide.png")
    Image.fromarray(np.array([[200]], dtype=np.uint8)).save(images / "dot.png")
    result, rows, out = explain(tmp_path, "out", images, "regions=xrai", "steps=8")
    assert result.exit_code == 0, result.output
    assert len(rows) == 2
    for row in rows:
        heatmap = read_png(out / row["outputs"]["heatmap"])
        assert read_png(out / row["outputs"]["regions_mask"]).shape == (32, 32, 3)  # configs/digits.yaml's input
        assert read_png(out / row["outputs"]["regions_overlay"]).shape == heatmap.shape == (256, 256, 3)
    methods = " ".join((REPO / "docs" / "methods.md").read_text().split())
    assert "the ranks at the size of the image the model saw" in methods


@settings(max_examples=60, deadline=None)
@given(paths=PATHS)
def test_claimed_names_cover_the_region_files(paths):
    options = OutputSection(attributions="npy")
    names, outputs = OutputNames(options, False, regions=True), []
    for number, relpath in enumerate(safe_relpath(path) for path in paths):
        sample = Sample(source=f"src{number}", relpath=relpath, x=None, pixels=None)
        names.claim(sample)
        outputs.append(output_files(output_stem(sample.relpath), False, options, regions=True))
    assert_distinct_and_inside(outputs)


def test_a_flat_image_and_a_tiny_one_are_one_region():
    flat = rank_regions(np.ones((32, 32)), dilated_masks(felzenszwalb_segmentations(np.zeros((3, 32, 32)))))
    assert flat.count == 1 and (flat.ranks == 1).all() and flat.gains.tolist() == [1.0]
    noise = np.random.default_rng(1).random((1, 6, 6))
    tiny = rank_regions(np.arange(36.0).reshape(6, 6), dilated_masks(felzenszwalb_segmentations(noise)))
    assert tiny.count == 1 and tiny.areas.tolist() == [1.0]  # no segment adds 50 pixels: all is the rest


def test_cli_top_k_records_rank_their_own_maps(tmp_path):
    images = copy_digits(tmp_path / "images", {"a.png": "eight_1438", "a.top1.png": "seven_1443"})
    result, rows, out = explain(tmp_path, "out", images, "regions=xrai", "target={top_k: 2}", "steps=8")
    assert result.exit_code == 0, result.output
    written = [row["outputs"][key] for row in rows for key in ("regions_mask", "regions_overlay")]
    assert len(rows) == 4 and len(set(written)) == 8 and all((out / path).is_file() for path in written)
    first, second = (row for row in rows if row["relpath"] == "a.png")
    assert first["regions"]["ranked"] != second["regions"]["ranked"]  # another class, another map
