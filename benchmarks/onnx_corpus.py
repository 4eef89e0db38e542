"""The ONNX corpus: real third-party ONNX models through every igcli route, as a table.

    python benchmarks/onnx_corpus.py                      # the stored corpus (tests/data/onnx)
    python benchmarks/onnx_corpus.py --caffe2             # and Caffe2 architectures at 224x224 (slow)
    python benchmarks/onnx_corpus.py --extra PATH:C,H,W   # and larger models kept outside the repo
    python benchmarks/onnx_corpus.py --write-torch DIR    # rebuild the torch exports stored in tests/data/onnx

For each model: the torch route (onnx2fx, IG on torch), `igcli export` (the ONNX gradient graph
and its float64 check), the onnxruntime route (IG on that graph), and the parity of the two IG maps
(||IG_ort - IG_torch|| / ||IG_torch||, worst map) and, where that exceeds 1e-4, each route's
distance from IG computed in float64 (the model's own float32 noise).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
STORED = ROOT / "tests" / "data" / "onnx"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"

# name: (file, producer, input shape without the batch axis, score)
CORPUS = {
    "PaddleOCR text-direction cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "PaddlePaddle (paddle2onnx)", (3, 48, 192), "logits"),
    "Keras CNN, NHWC": ("keras_cnn_nhwc_opset9.onnx", "tf2onnx (Keras)", (32, 32, 3), "logits"),
    "Keras MobileNet-like, hard-swish/SE/GELU/LayerNorm": ("keras_mobilenet_nchw_opset13.onnx", "tf2onnx (Keras)", (3, 32, 32), "softmax"),
    "scikit-learn MLP (digits)": ("sklearn_mlp_digits.onnx", "skl2onnx", (64,), "logits"),
    "ResNet (HF transformers)": ("torch_resnet.onnx", "pytorch (torch.onnx)", (3, 32, 32), "softmax"),
    "MobileNetV3 block stack": ("torch_mobilenetv3.onnx", "pytorch (torch.onnx)", (3, 32, 32), "softmax"),
    "EfficientNet (HF transformers)": ("torch_efficientnet.onnx", "pytorch (torch.onnx)", (3, 32, 32), "softmax"),
    "ViT (HF transformers)": ("torch_vit.onnx", "pytorch (torch.onnx)", (3, 32, 32), "softmax"),
    "ConvNeXt (HF transformers)": ("torch_convnext.onnx", "pytorch (torch.onnx)", (3, 32, 32), "softmax"),
}
# Architectures written by onnx-caffe2, shipped (with constant weights) inside the onnx wheel.
CAFFE2 = {"SqueezeNet (Caffe2)": "light_squeezenet.onnx", "ShuffleNet (Caffe2)": "light_shufflenet.onnx",
          "Inception v1 (Caffe2, LRN)": "light_inception_v1.onnx"}


def caffe2_model(file: str, seed: int = 0) -> onnx.ModelProto:
    """A Caffe2 architecture from the onnx wheel, its constant weights replaced by seeded random ones
    (as shipped every weight is 0.02, which makes every class score the same function)."""
    from onnx import numpy_helper

    model = onnx.load(str(LIGHT / file))
    rng = np.random.default_rng(seed)
    initial = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape":
            kept.append(node)
            continue
        shape = tuple(int(d) for d in initial[node.input[0]])
        name = node.output[0]
        if len(shape) > 1:
            values = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        elif any(key in name for key in ("_s_", "riv", "_var")):
            values = rng.uniform(0.5, 1.5, shape)
        else:
            values = rng.normal(0, 0.1, shape)
        model.graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), name))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


# ---- torch exports of the main architecture families (small widths, random weights) ----------

class _Logits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, channels // 4, 1), nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x):
        scale = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(scale))))


def _mobilenetv3() -> nn.Module:
    """MobileNetV3's building blocks: hard-swish stem, inverted residuals with SE and hard-sigmoid."""
    def block(cin, hidden, cout, kernel, stride, act):
        return nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act(),
                             nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
                             nn.BatchNorm2d(hidden), act(), _SqueezeExcite(hidden),
                             nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
            self.b1 = block(8, 16, 8, 3, 1, nn.ReLU)
            self.b2 = block(8, 24, 12, 5, 2, nn.Hardswish)
            self.head = nn.Sequential(nn.Linear(12, 32), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(32, 5))

        def forward(self, x):
            x = self.stem(x)
            x = x + self.b1(x)
            x = self.b2(x)
            return self.head(x.mean((2, 3)))

    return Net()


def torch_models() -> dict[str, nn.Module]:
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        EfficientNetConfig,
        EfficientNetForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    torch.manual_seed(0)
    models = {
        "torch_resnet.onnx": _Logits(ResNetForImageClassification(ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck", num_labels=5))),
        "torch_mobilenetv3.onnx": _mobilenetv3(),
        "torch_efficientnet.onnx": _Logits(EfficientNetForImageClassification(EfficientNetConfig(
            image_size=32, width_coefficient=0.25, depth_coefficient=0.2, hidden_dim=320, num_labels=5))),
        "torch_vit.onnx": _Logits(ViTForImageClassification(ViTConfig(
            image_size=32, patch_size=8, num_hidden_layers=2, num_attention_heads=2, hidden_size=32,
            intermediate_size=64, num_labels=5))),
        "torch_convnext.onnx": _Logits(ConvNextForImageClassification(ConvNextConfig(
            hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=5))),
    }
    for module in models.values():  # batch norms with non-trivial statistics, as trained ones have
        for layer in module.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.running_mean.normal_(0, 0.1)
                layer.running_var.uniform_(0.5, 1.5)
                layer.weight.data.uniform_(0.5, 1.5)
        module.eval()
    return models


def write_torch_models(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for file, module in torch_models().items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.randn(2, 3, 32, 32),), str(directory / file), dynamo=False,
                              input_names=["pixel_values"], output_names=["logits"], opset_version=14,
                              dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}})
        print(f"wrote {directory / file}")


# ---- the table -----------------------------------------------------------------------------------

def ig_maps(backend, x: torch.Tensor, steps: int = 16) -> torch.Tensor:
    from igcli.attribution.engine import Quadrature, TargetSpec, attribute
    from igcli.attribution.quadrature import Rule

    records = attribute(backend, x, torch.zeros_like(x)[:, None], TargetSpec("predicted"),
                      Quadrature(Rule.gausslegendre, steps), batch_size=64)
    return torch.stack([record.attributions.double() for record in records])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """The worst map's ||a - b|| / ||b||."""
    difference = (a.double() - b.double()).flatten(1).norm(dim=1)
    return float((difference / b.double().flatten(1).norm(dim=1)).max())


def evaluate(name: str, producer: str, path: Path, shape: tuple[int, ...], score: str) -> dict:
    """One corpus row: each route run, and the IG parity figures."""
    from igcli.backends.loading import build_gradient_graph, load_model
    from igcli.backends.onnx.check import _onnx_references
    from igcli.backends.onnx.grad import opset_of
    from igcli.backends.torch_backend import TorchBackend
    from igcli.errors import root_cause

    model = onnx.load(str(path))
    row = {"model": name, "producer": producer, "opset": opset_of(model)}
    cpu = torch.device("cpu")
    x = torch.randn((2,) + shape, generator=torch.Generator().manual_seed(0))
    try:
        torch_maps = ig_maps(load_model(path, None, score, cpu, backend="torch", input_shape=shape), x)
        row["torch route"] = "ok"
    except Exception as error:  # noqa: BLE001 - a row reports any failure
        torch_maps, row["torch route"] = None, f"fails: {root_cause(error)[:60]}"
    start = time.perf_counter()
    try:
        graph, check = build_gradient_graph(path, None, score, input_shape=shape)
        row["igcli export"] = f"ok ({check.error:.0e} vs {check.reference}; {time.perf_counter() - start:.0f} s)"
    except Exception as error:  # noqa: BLE001
        row["igcli export"] = f"fails: {root_cause(error)[:60]}"
        return row
    try:
        ort_maps = ig_maps(load_model(path, None, score, cpu, backend="onnxruntime", input_shape=shape), x)
        row["onnxruntime route"] = "ok"
    except Exception as error:  # noqa: BLE001
        row["onnxruntime route"] = f"fails: {root_cause(error)[:60]}"
        return row
    if torch_maps is None:
        module, _ = _onnx_references(model, path)
        torch_maps = ig_maps(TorchBackend(module, score), x)
    parity = relative(ort_maps, torch_maps)
    row["parity"] = f"{parity:.1e}"
    if parity > 1e-4:  # then float64 says whether that is the model's own float32 noise
        _, build_double = _onnx_references(model, path)
        exact = ig_maps(TorchBackend(build_double(), score), x.double())
        row["parity"] += f" (vs f64: onnxruntime {relative(ort_maps, exact):.1e}, torch {relative(torch_maps, exact):.1e})"
    return row


def rows(extra: list[str], caffe2: bool):
    """The table's rows, one model at a time."""
    import os

    os.environ.setdefault("IGCLI_CACHE_DIR", tempfile.mkdtemp(prefix="igcli-corpus-"))
    for name, (file, producer, shape, score) in CORPUS.items():
        yield evaluate(name, producer, STORED / file, shape, score)
    with tempfile.TemporaryDirectory() as folder:
        for name, file in CAFFE2.items() if caffe2 else ():
            path = Path(folder) / file
            onnx.save(caffe2_model(file), path)
            yield evaluate(name, "onnx-caffe2", path, (3, 224, 224), "logits")
        for entry in extra:
            path, _, dims = entry.rpartition(":")
            model = onnx.load(path)
            producer = f"{model.producer_name} {model.producer_version}".strip() or "unnamed"
            yield evaluate(Path(path).name, producer, Path(path), tuple(int(d) for d in dims.split(",")), "logits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", action="append", default=[], help="PATH:C,H,W of a model kept outside the repo")
    parser.add_argument("--caffe2", action="store_true", help="add the Caffe2 architectures of the onnx wheel (224x224)")
    parser.add_argument("--write-torch", type=Path, help="write the torch exports to this folder and stop")
    args = parser.parse_args()
    if args.write_torch:
        write_torch_models(args.write_torch)
        return
    columns = ["model", "producer", "opset", "torch route", "igcli export", "onnxruntime route", "parity"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows(args.extra, args.caffe2):
        print("| " + " | ".join(str(row.get(column, "-")) for column in columns) + " |", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
