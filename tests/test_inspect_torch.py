"""`igcli inspect` on models that are not ONNX: a Hugging Face image folder, a TorchScript traced at
batch 1 on NHWC inputs, a torch.export program and a safetensors state_dict with a factory."""
from __future__ import annotations

import json

import torch
from click.testing import CliRunner
from torch import nn

from igcli.cli.commands import main

from .test_model_sources import OUTPUT_MODELS, vit_folder


def inspect(*args) -> dict:
    result = CliRunner().invoke(main, ["inspect", "--json", *[str(a) for a in args]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_huggingface_folder_shows_its_input_outputs_preprocessing_and_labels(tmp_path):
    from transformers import AutoModelForImageClassification

    folder = vit_folder(tmp_path / "vit")
    report = inspect(folder)
    config = json.loads((folder / "config.json").read_text())
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert report["format"] == "huggingface image folder"
    assert report["inputs"] == [{"name": "x", "shape": ["N", 3, processor["size"]["height"], processor["size"]["width"]]}]
    assert report["layout"] == "NCHW"
    assert report["labels"] == {"count": 3, "first": [config["id2label"][str(i)] for i in range(3)]}
    assert {"name": "logits", "shape": ["N", 3]} in report["outputs"]
    # Caffe-style mean/std in 0..255 units with no rescale: igcli's are on 0..1 pixels.
    assert report["preprocessing"]["mean"] == [m / 255 for m in processor["image_mean"]]
    model = AutoModelForImageClassification.from_pretrained(folder)
    assert report["parameters"] == sum(p.numel() for p in model.parameters())


class ChannelsLast(nn.Module):
    """Takes [N, H, W, C] and flattens its batch the way a trace bakes in."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 4)

    def forward(self, x):
        return self.linear(x).mean((1, 2)).reshape(int(x.shape[0]), 4)


def test_a_torchscript_traced_at_batch_one_on_nhwc_shows_layout_and_fixed_batch(tmp_path):
    traced = torch.jit.trace(ChannelsLast().eval(), torch.zeros(1, 8, 10, 3))
    traced.save(str(tmp_path / "nhwc.ts"))
    report = inspect(tmp_path / "nhwc.ts", "--input-shape", "3,8,10")
    assert report["format"] == "torchscript"
    assert report["layout"] == "NHWC" and report["fixed_batch"] == 1
    assert report["inputs"] == [{"name": "x", "shape": [1, 8, 10, 3]}]
    assert report["outputs"] == [{"name": "0", "shape": [1, 4]}]
    # Without a size, it says what to give.
    report = inspect(tmp_path / "nhwc.ts")
    assert "--input-shape" in report["layout"] and "outputs" not in report


def test_a_torch_export_program_uses_its_example_shape(tmp_path):
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 7)).eval()
    program = torch.export.export(module, (torch.zeros(2, 1, 6, 6),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "model.pt2"))
    report = inspect(tmp_path / "model.pt2")
    assert report["format"] == "torch.export program (.pt2)"
    assert report["inputs"] == [{"name": "x", "shape": ["N", 1, 6, 6]}] and report["layout"] == "NCHW"
    assert report["outputs"] == [{"name": "0", "shape": ["N", 7]}]


def test_a_safetensors_state_dict_with_a_factory_lists_named_outputs(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "heads.py").write_text(OUTPUT_MODELS)
    namespace: dict = {}
    exec(OUTPUT_MODELS, namespace)  # noqa: S102 - the test's own model file
    save_file(namespace["TwoHeads"]("dict").state_dict(), str(tmp_path / "heads.safetensors"))
    report = inspect(tmp_path / "heads.safetensors", "--factory", f"{tmp_path / 'heads.py'}:dict_model",
                     "--input-shape", "3,16,16")
    assert report["format"] == "state_dict + factory"
    assert report["outputs"] == [{"name": "boxes", "shape": ["N", 4]}, {"name": "logits", "shape": ["N", 5]}]
    assert report["parameters"] == 3 * 6 * 9 + 6 + 24 * 4 + 4 + 24 * 5 + 5
