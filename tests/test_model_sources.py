"""Models users bring: Hugging Face image folders, timm/torchvision by name, safetensors, NHWC and
BGR inputs, several outputs, TorchScript traced at batch 1. Each run goes through the CLI and its
maps are checked against captum on the model in its own input space."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from click.testing import CliRunner
from PIL import Image
from torch import nn

from igcli.backends.loading import load_model
from igcli.cli.commands import main
from igcli.errors import ConfigError, root_cause

from .conftest import SAMPLE_DATA

CPU = torch.device("cpu")
STEPS = 16
# What every CLI run here shares: a fixed rule and step count captum has too, raw outputs, the maps saved.
IG_ARGS = ("--set", "model.score=logits", "--set", "method=gausslegendre", "--steps", str(STEPS),
           "--set", "output.attributions=npy", "--set", "output.heatmap.style=none", "-q")


def igcli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def saved_map(out: Path, record: dict) -> torch.Tensor:
    return torch.from_numpy(np.load(out / record["outputs"]["attributions"]))


def rgb_image(folder: Path, name: str = "photo.png", size=(40, 48), seed: int = 0) -> Path:
    """A seeded RGB image, width x height = ``size``, with some structure."""
    rng = np.random.default_rng(seed)
    height, width = size[1], size[0]
    ramp = np.linspace(0, 255, width)[None, :, None] * np.array([1.0, 0.5, 0.2])
    pixels = (0.6 * ramp + 0.4 * rng.integers(0, 256, (height, width, 3))).clip(0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.fromarray(pixels).save(path)
    return path


def captum_map(forward, x: torch.Tensor, baseline: torch.Tensor, target: int) -> torch.Tensor:
    x, baseline = x.double().unsqueeze(0), baseline.double().unsqueeze(0)
    return IntegratedGradients(forward).attribute(x, baselines=baseline, target=target, n_steps=STEPS,
                                                  method="gausslegendre")[0].float()


def assert_close_maps(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float = 1e-4) -> None:
    assert ours.shape == theirs.shape
    assert float((ours - theirs).abs().max() / theirs.abs().max()) <= tolerance


# ---- Hugging Face image classifiers in a local folder -------------------------------------------


def vit_folder(folder: Path) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(0)
    config = ViTConfig(image_size=24, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"},
                       label2id={"cat": 0, "dog": 1, "fox": 2})
    ViTForImageClassification(config).save_pretrained(folder)
    # Caffe-style: no rescale, mean and std in 0..255 units.
    ViTImageProcessorPil(size={"height": 24, "width": 24}, do_rescale=False, image_mean=[102.0, 127.5, 153.0],
                         image_std=[51.0, 63.75, 76.5]).save_pretrained(folder)
    return folder


def convnext_folder(folder: Path) -> Path:
    from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessorPil

    torch.manual_seed(0)
    config = ConvNextConfig(num_channels=3, patch_size=4, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                            num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"},
                            label2id={"cat": 0, "dog": 1, "fox": 2})
    ConvNextForImageClassification(config).save_pretrained(folder)
    ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875, image_mean=[0.45, 0.5, 0.55],
                              image_std=[0.2, 0.3, 0.25]).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("build", [vit_folder, convnext_folder])
def test_huggingface_image_folder_preprocesses_labels_and_attributes_like_its_own_processor(build, tmp_path):
    """Preprocessing from preprocessor_config.json (checked against the folder's own Hugging Face
    processor), labels from id2label, maps against captum on the transformers model."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder = build(tmp_path / "model")
    image = rgb_image(tmp_path / "photos")
    out = tmp_path / "out"
    named = ("--set", "model.output=logits") if build is convnext_folder else ()  # the ModelOutput's own name
    result = igcli("explain", "--model", folder, image, "-o", out, "--set", "target=fox", *named, *IG_ARGS)
    assert result.exit_code == 0, result.output
    (record,) = records(out)
    assert record["target"]["index"] == 2 and record["target"]["label"] == "fox"

    # The PIL processor the folder names: with torchvision importable, transformers would pick its
    # torchvision resize, which differs from PIL's by ~1e-3.
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    model = AutoModelForImageClassification.from_pretrained(folder).double().eval()
    pixels = Image.open(image).convert("RGB")
    x = processor(pixels, return_tensors="pt")["pixel_values"][0]
    baseline = processor(Image.new("RGB", pixels.size), return_tensors="pt")["pixel_values"][0]
    theirs = captum_map(lambda batch: model(pixel_values=batch).logits, x, baseline, 2)
    assert_close_maps(saved_map(out, record), theirs)


def test_config_keys_override_the_folder_preprocessing(tmp_path):
    from igcli.config import load_config
    from igcli.pipeline.image_job import ImageJob

    folder = vit_folder(tmp_path / "model")
    config = load_config(None, [(f"model.path={folder}", "--set"), ("input.std=[1, 1, 1]", "--set")])
    job = ImageJob(config)
    assert job.preprocess.normalization.std == (1.0, 1.0, 1.0)  # the config's
    assert job.preprocess.normalization.mean == pytest.approx((0.4, 0.5, 0.6))  # the folder's, in [0, 1] units
    assert job.preprocess.resize == (24, 24) and job.labels == ["cat", "dog", "fox"]
    # Without preprocessor_config.json the model's image_size still sizes the input (a ViT needs it).
    (folder / "preprocessor_config.json").unlink()
    job = ImageJob(load_config(None, [(f"model.path={folder}", "--set")]))
    assert job.preprocess.resize == (24, 24) and job.preprocess.normalization.mean == (0.0,)


# ---- NHWC and BGR -------------------------------------------------------------------------------


def rgb_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 4, 3), nn.Tanh(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()


class ChannelsLastBGR(nn.Module):
    """``net`` taking [N, H, W, C] inputs in BGR order, as TensorFlow and OpenCV pipelines feed them."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2).flip(1))


RGB_MEAN, RGB_STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
NORMALIZE_RGB = ("--set", f"input.mean={RGB_MEAN}", "--set", f"input.std={RGB_STD}")
# The same normalisation, given in the BGR model's own channel order.
NORMALIZE_BGR = ("--set", f"input.mean={RGB_MEAN[::-1]}", "--set", f"input.std={RGB_STD[::-1]}",
                 "--set", "input.mode=BGR")


def test_nhwc_bgr_models_torch_and_onnx_give_the_rgb_twins_maps(tmp_path, monkeypatch):
    """The layout is detected (by running the torch module, from the ONNX input's shape) and the
    maps, on torch and through an NHWC gradient graph on onnxruntime, equal the NCHW RGB twin's,
    and captum's on the NHWC BGR model rearranged."""
    monkeypatch.setenv("IGCLI_CACHE_DIR", str(tmp_path / "cache"))
    net = rgb_net()
    twin = ChannelsLastBGR(net).eval()
    example = torch.rand(2, 3, 24, 24)
    torch.jit.trace(net, example).save(str(tmp_path / "rgb.ts"))
    torch.jit.trace(twin, example.permute(0, 2, 3, 1).flip(3)).save(str(tmp_path / "nhwc_bgr.ts"))
    torch.onnx.export(twin, (example.permute(0, 2, 3, 1),), str(tmp_path / "nhwc_bgr.onnx"), dynamo=True,
                      input_names=["image"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    image = rgb_image(tmp_path / "photos", size=(24, 24))
    common = ("--set", "input.resize=[24, 24]", "--set", "target=3", *IG_ARGS)
    maps = {}
    runs = (("rgb.ts", NORMALIZE_RGB, "auto"), ("nhwc_bgr.ts", NORMALIZE_BGR, "auto"),
            ("nhwc_bgr.onnx", NORMALIZE_BGR, "torch"), ("nhwc_bgr.onnx", NORMALIZE_BGR, "onnxruntime"))
    for name, normalize, runtime in runs:
        out = tmp_path / f"out-{name}-{runtime}"
        result = igcli("explain", "--model", tmp_path / name, image, "-o", out, *normalize, *common,
                       "--set", f"model.backend={runtime}")
        assert result.exit_code == 0, result.output
        (record,) = records(out)
        maps[name, runtime] = saved_map(out, record)
    for key in maps:
        assert_close_maps(maps[key], maps["rgb.ts", "auto"], 1e-5)

    # captum on the NHWC BGR model in its own space, then rearranged to NCHW RGB.
    pixels = torch.from_numpy(np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255)  # H W C (RGB)
    bgr = pixels.flip(2)
    mean, std = torch.tensor(RGB_MEAN[::-1]), torch.tensor(RGB_STD[::-1])
    x, baseline = (bgr - mean) / std, (torch.zeros_like(bgr) - mean) / std
    theirs = captum_map(ChannelsLastBGR(net.double()), x, baseline, 3).permute(2, 0, 1).flip(0)
    assert_close_maps(maps["nhwc_bgr.ts", "auto"], theirs)
    assert not torch.allclose(theirs, theirs.flip(0))  # channel order matters in this check


def test_a_layout_that_contradicts_the_onnx_input_is_refused_and_inspect_prints_it(tmp_path):
    twin = ChannelsLastBGR(rgb_net()).eval()
    path = tmp_path / "nhwc.onnx"
    torch.onnx.export(twin, (torch.rand(1, 24, 24, 3),), str(path), dynamo=True, input_names=["image"])
    result = igcli("inspect", path, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["layout"] == "NHWC"
    image = rgb_image(tmp_path / "photos", size=(24, 24))
    out = tmp_path / "out"
    result = igcli("explain", "--model", path, image, "-o", out, "--set", "input.layout=NCHW", *IG_ARGS)
    assert result.exit_code == 2 and "input.layout is NCHW but" in result.stderr and "takes NHWC" in result.stderr
    assert not out.exists()


# ---- several outputs ----------------------------------------------------------------------------

OUTPUT_MODELS = textwrap.dedent('''
    from collections import namedtuple

    import torch
    from torch import nn

    Detections = namedtuple("Detections", ["boxes", "logits"])


    class TwoHeads(nn.Module):
        """A detector's shape: box offsets first, class logits second."""

        def __init__(self, kind="tuple"):
            super().__init__()
            torch.manual_seed(0)
            self.kind = kind
            self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
            self.boxes, self.logits = nn.Linear(24, 4), nn.Linear(24, 5)

        def forward(self, x):
            h = self.body(x)
            boxes, logits = self.boxes(h), self.logits(h)
            if self.kind == "dict":
                return {"boxes": boxes, "logits": logits}
            if self.kind == "namedtuple":
                return Detections(boxes, logits)
            return boxes, logits


    def tuple_model():
        return TwoHeads("tuple")


    def dict_model():
        return TwoHeads("dict")


    def namedtuple_model():
        return TwoHeads("namedtuple")
''')


@pytest.fixture
def output_models(tmp_path) -> Path:
    path = tmp_path / "heads.py"
    path.write_text(OUTPUT_MODELS)
    return path


@pytest.mark.parametrize("kind,names", [("tuple", "0 [N, 4]; 1 [N, 5]"),
                                        ("dict", "0 'boxes' [N, 4]; 1 'logits' [N, 5]"),
                                        ("namedtuple", "0 'boxes' [N, 4]; 1 'logits' [N, 5]")])
def test_several_outputs_without_model_output_are_refused_before_any_file(kind, names, output_models, tmp_path):
    image = rgb_image(tmp_path / "photos", size=(16, 16))
    out = tmp_path / "out"
    result = igcli("explain", "--set", f"model.factory={output_models}:{kind}_model", image, "-o", out,
                   "--set", "input.resize=[16, 16]", *IG_ARGS)
    assert result.exit_code == 2
    assert "the model has 2 outputs" in result.stderr and names in result.stderr
    assert "set model.output" in result.stderr
    assert not out.exists()  # nothing written: no manifest, no report, no results.jsonl


@pytest.mark.parametrize("kind,selector", [("tuple", "1"), ("dict", "logits"), ("namedtuple", "logits"),
                                           ("namedtuple", "-1")])
def test_model_output_picks_the_output_captum_explains(kind, selector, output_models, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("heads", output_models)
    heads = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(heads)
    module = heads.TwoHeads(kind).double().eval()

    image = rgb_image(tmp_path / "photos", size=(16, 16))
    out = tmp_path / "out"
    result = igcli("explain", "--set", f"model.factory={output_models}:{kind}_model", image, "-o", out,
                   "--set", "input.resize=[16, 16]", "--set", f"model.output={selector}", "--set", "target=2",
                   *IG_ARGS)
    assert result.exit_code == 0, result.output
    (record,) = records(out)
    x = torch.from_numpy(np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    theirs = captum_map(lambda batch: module(batch)[1 if kind == "tuple" else "logits" if kind == "dict"
                                                  else 1], x, torch.zeros_like(x), 2)
    assert_close_maps(saved_map(out, record), theirs)


def test_multi_output_onnx_is_refused_with_its_outputs_and_runs_with_model_output(output_models, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("heads", output_models)
    heads = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(heads)
    path = tmp_path / "heads.onnx"
    torch.onnx.export(heads.TwoHeads("tuple").eval(), (torch.rand(2, 3, 16, 16),), str(path), dynamo=True,
                      input_names=["image"], output_names=["boxes", "class_logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    image = rgb_image(tmp_path / "photos", size=(16, 16))
    out = tmp_path / "out"
    result = igcli("explain", "--model", path, image, "-o", out, *IG_ARGS)
    assert result.exit_code == 2 and "0 'boxes'" in result.stderr and "1 'class_logits'" in result.stderr
    assert not out.exists()
    result = igcli("explain", "--model", path, image, "-o", out, "--set", "model.output=class_logits",
                   "--set", "target=2", *IG_ARGS)
    assert result.exit_code == 0, result.output
    module = heads.TwoHeads("tuple").double().eval()
    x = torch.from_numpy(np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    theirs = captum_map(lambda batch: module(batch)[1], x, torch.zeros_like(x), 2)
    assert_close_maps(saved_map(out, records(out)[0]), theirs)
    # The onnxruntime gradient graph differentiates the chosen output too.
    on_ort = tmp_path / "on_ort"
    result = igcli("explain", "--model", path, image, "-o", on_ort, "--set", "model.output=class_logits",
                   "--set", "model.backend=onnxruntime", "--set", "target=2", *IG_ARGS)
    assert result.exit_code == 0, result.output
    assert_close_maps(saved_map(on_ort, records(on_ort)[0]), theirs)


# ---- TorchScript traced at batch 1, and root causes ---------------------------------------------


class FlattensItsBatch(nn.Module):
    """Any batch when run eagerly; tracing bakes int(x.shape[0]) in, as exporters often do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        h = torch.tanh(self.conv(x))
        return self.fc(h.reshape(int(x.shape[0]), -1))


def test_torchscript_traced_at_batch_1_runs_with_one_warning_and_matches_the_eager_module(tmp_path):
    eager = FlattensItsBatch().eval()
    with pytest.warns(torch.jit.TracerWarning):
        torch.jit.trace(eager, torch.rand(1, 3, 8, 8)).save(str(tmp_path / "batch1.ts"))
    torch.save(eager, tmp_path / "eager.pt")  # the eager module itself, pickled: any batch
    photos = tmp_path / "photos"
    for seed in range(3):
        rgb_image(photos, f"p{seed}.png", size=(8, 8), seed=seed)
    maps = {}
    for name in ("batch1.ts", "eager.pt"):
        out = tmp_path / f"out-{name}"
        result = igcli("explain", "--model", tmp_path / name, photos, "-o", out, "--set", "input.resize=[8, 8]",
                       "--set", "model.trust_pickle=true", *IG_ARGS[:-1])
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.stderr.splitlines() if "batch size 1 only" in line]
        assert len(warnings) == (1 if name == "batch1.ts" else 0)
        maps[name] = {r["input"]: saved_map(out, r) for r in records(out)}
    for key, expected in maps["eager.pt"].items():
        assert_close_maps(maps["batch1.ts"][key], expected, 1e-5)


def test_a_model_error_carries_its_root_cause_not_the_torchscript_preamble(tmp_path):
    eager = FlattensItsBatch().eval()
    with pytest.warns(torch.jit.TracerWarning):
        torch.jit.trace(eager, torch.rand(1, 3, 8, 8)).save(str(tmp_path / "batch1.ts"))
    image = rgb_image(tmp_path / "photos", size=(16, 16))
    result = igcli("explain", "--model", tmp_path / "batch1.ts", image, "-o", tmp_path / "out",
                   "--set", "input.resize=[16, 16]", *IG_ARGS)
    assert result.exit_code == 3
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("igcli: error:")]
    assert "model rejected an input shaped [1, 3, 16, 16]" in line and "TorchScript interpreter" not in line
    assert "mat1 and mat2 shapes cannot be multiplied" in line


def test_root_cause_is_the_deepest_exception_of_the_chain():
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise RuntimeError("Failed to decompose the FX graph.\nNext steps: ...") from inner
    except RuntimeError as error:
        assert root_cause(error) == "'inner'"


# ---- safetensors, timm and torchvision by name --------------------------------------------------

MODELS = SAMPLE_DATA / "models"


def test_safetensors_state_dict_for_a_factory_computes_the_same_function(tmp_path):
    from safetensors.torch import save_file

    state = torch.load(MODELS / "digits_cnn_state.pt", weights_only=True)
    save_file(state, str(tmp_path / "digits.safetensors"))
    factory = f"{MODELS / 'digits_cnn.py'}:build_model"
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = load_model(MODELS / "digits_cnn_state.pt", factory, "logits", CPU).scores(x)
    other = load_model(tmp_path / "digits.safetensors", factory, "logits", CPU).scores(x)
    torch.testing.assert_close(other, reference)
    # A training script's checkpoint: wrapped in {"state_dict": ...}, saved from DistributedDataParallel.
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ckpt.pth")
    wrapped = load_model(tmp_path / "ckpt.pth", factory, "logits", CPU).scores(x)
    torch.testing.assert_close(wrapped, reference)


def importable(name: str) -> bool:
    try:
        __import__(name)
        if name == "torchvision":
            import torchvision.models  # noqa: F401
    except Exception:  # noqa: BLE001 - a torchvision built for another torch raises RuntimeError
        return False
    return True


@pytest.mark.skipif(not importable("timm"), reason="timm does not import here (it needs torchvision; "
                                                   ".ci/run installs one that imports beside CPU torch)")
def test_timm_architecture_by_name_with_a_safetensors_checkpoint(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    module = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    save_file(module.state_dict(), str(tmp_path / "ckpt.safetensors"))
    image = rgb_image(tmp_path / "photos", size=(64, 64))
    out = tmp_path / "out"
    result = igcli("explain", "--set", "model.timm=resnet10t", "--model", tmp_path / "ckpt.safetensors", image,
                   "-o", out, "--set", "input.resize=[64, 64]", "--set", "input.crop=null", "--set", "target=1",
                   *IG_ARGS)
    assert result.exit_code == 0, result.output
    record = records(out)[0]
    cfg = module.pretrained_cfg
    mean, std = torch.tensor(cfg["mean"]).view(3, 1, 1), torch.tensor(cfg["std"]).view(3, 1, 1)
    pixels = torch.from_numpy(np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    theirs = captum_map(module.double(), (pixels - mean) / std, (0 - mean) / std, 1)
    assert_close_maps(saved_map(out, record), theirs, 1e-3)


@pytest.mark.skipif(not importable("torchvision"), reason="torchvision does not import beside this torch")
def test_torchvision_architecture_by_name_with_a_checkpoint(tmp_path):
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.get_model("resnet18", weights=None, num_classes=4).eval()
    torch.save(module.state_dict(), tmp_path / "resnet18.pth")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    from igcli.backends.sources import architecture

    built, defaults = architecture("torchvision", "resnet18", tmp_path / "resnet18.pth")
    torch.testing.assert_close(built.eval()(x), module(x))
    # Preprocessing from the default weights' metadata (the weights are never fetched).
    transform = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    assert defaults.input["mean"] == tuple(transform.mean) and defaults.input["std"] == tuple(transform.std)
    assert defaults.input["resize"] == transform.resize_size[0] and defaults.input["crop"] == (224, 224)


def test_torchvision_route_without_an_importable_torchvision_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now raises ImportError
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "resnet18.pth")
    image = rgb_image(tmp_path / "photos", size=(16, 16))
    out = tmp_path / "out"
    result = igcli("explain", "--set", "model.torchvision=resnet18", "--model", tmp_path / "resnet18.pth", image,
                   "-o", out, *IG_ARGS)
    assert result.exit_code == 3 and "install a torchvision built for this torch" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_architecture_by_name_needs_a_local_checkpoint():
    result = igcli("validate-config", "--set", "model.timm=resnet18")
    assert result.exit_code == 2 and "needs model.path" in result.stderr and "never downloads" in result.stderr


def test_load_model_refuses_several_outputs_through_the_api_too():
    class Pair(nn.Module):
        def forward(self, x):
            return x.flatten(1), x.flatten(1) * 2

    with pytest.raises(ConfigError, match=r"the model has 2 outputs \(0 \[N, 4\]; 1 \[N, 4\]\)"):
        load_model(None, None, "logits", CPU, module=Pair(), input_shape=(1, 2, 2))
    for shape in ((1, 2, 2), None):  # seen by the probe; or picked at each call where no size is known
        runner = load_model(None, None, "logits", CPU, module=Pair(), input_shape=shape, output=1)
        torch.testing.assert_close(runner.scores(torch.ones(3, 1, 2, 2)), torch.full((3, 4), 2.0))
    with pytest.raises(ConfigError, match="the model has 2 outputs"):  # unseen, and no model.output
        load_model(None, None, "logits", CPU, module=Pair()).scores(torch.ones(3, 1, 2, 2))


def test_export_output_picks_one_output_of_a_multi_output_onnx_and_matches_captum(output_models, tmp_path):
    """`igcli export --output` on a two-head ONNX: refused without it (listing the outputs), and the
    exported graph's gradients on the chosen head equal captum's IG on that head."""
    import importlib.util

    import onnxruntime

    spec = importlib.util.spec_from_file_location("heads", output_models)
    heads = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(heads)
    path = tmp_path / "heads.onnx"
    torch.onnx.export(heads.TwoHeads("tuple").eval(), (torch.rand(2, 3, 16, 16),), str(path), dynamo=True,
                      input_names=["image"], output_names=["boxes", "class_logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    graph = tmp_path / "grad.onnx"
    refused = igcli("export", path, "-o", graph, "--score", "logits")
    assert refused.exit_code == 2 and "0 'boxes'" in refused.stderr and "1 'class_logits'" in refused.stderr
    assert "--output" in refused.stderr and "model.output" not in refused.stderr and not graph.exists()
    assert igcli("export", path, "-o", graph, "--score", "logits", "--output", "nope").exit_code == 2

    module = heads.TwoHeads("tuple").double().eval()
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3))
    theirs = captum_map(lambda batch: module(batch)[1], x, torch.zeros_like(x), 2)
    for selector in ("class_logits", "1"):
        result = igcli("export", path, "-o", graph, "--score", "logits", "--output", selector)
        assert result.exit_code == 0, result.output
        # IG by the exported graph: Gauss-Legendre on its gradients of class 2, at captum's nodes.
        session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        nodes, weights = np.polynomial.legendre.leggauss(STEPS)
        alphas, weights = (nodes + 1) / 2, weights / 2
        points = (torch.from_numpy(alphas).float().view(-1, 1, 1, 1) * x).numpy()
        target = np.zeros((len(points), 5), dtype=np.float32)
        target[:, 2] = 1
        scores, grads = session.run(None, {"input": points, "target_weights": target})
        assert scores.shape == (STEPS, 5)
        ours = (torch.from_numpy(grads).double() * torch.from_numpy(weights).view(-1, 1, 1, 1)).sum(0) * x.double()
        assert_close_maps(ours, theirs, 1e-4)


def test_export_output_on_a_torch_model_with_a_dict_of_outputs(output_models, tmp_path):
    import importlib.util

    import onnxruntime

    spec = importlib.util.spec_from_file_location("heads", output_models)
    heads = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(heads)
    module = heads.TwoHeads("dict").eval()
    torch.save(module.state_dict(), tmp_path / "heads.pt")
    graph = tmp_path / "grad.onnx"
    factory = ("--factory", f"{output_models}:dict_model", "--input-shape", "3,16,16", "--score", "logits")
    refused = igcli("export", tmp_path / "heads.pt", "-o", graph, *factory)
    assert refused.exit_code == 2 and "0 'boxes' [N, 4]; 1 'logits' [N, 5]" in refused.stderr and not graph.exists()
    result = igcli("export", tmp_path / "heads.pt", "-o", graph, *factory, "--output", "logits")
    assert result.exit_code == 0, result.output
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    scores, _ = session.run(None, {"input": x, "target_weights": np.eye(5, dtype=np.float32)[[1, 2]]})
    np.testing.assert_allclose(scores, module(torch.from_numpy(x))["logits"].detach().numpy(), rtol=1e-5, atol=1e-6)
