"""Per-op gradient checks for ONNX models: igcli's gradient graph, run on onnxruntime, against
(1) onnxruntime's own forward of the plain model (the conversion computes the same function) and
(2) torch autograd in float64 on the converted model (the exported backward is that gradient)."""
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from igcli.models.base import ScoreKind
from igcli.models.export import export_gradient_graph, read_info
from igcli.models.onnx_backend import OnnxRuntimeBackend
from igcli.models.onnx_source import onnx_to_torch
from igcli.models.torch_backend import TorchBackend

from .conftest import needs_maxpool_export
from .onnx_models import single_op_model

rng = np.random.default_rng(0)


def w(*shape, low=None, high=None):
    if low is not None:
        return rng.uniform(low, high, shape).astype(np.float32)
    return rng.normal(0, 0.5, shape).astype(np.float32)


IMAGE = (3, 6, 6)
CASES = {
    "Conv": ("Conv", IMAGE, {"w": w(4, 3, 3, 3), "b": w(4)}, 13, {"pads": [1, 1, 1, 1]}),
    "Conv-stride2": ("Conv", IMAGE, {"w": w(4, 3, 3, 3)}, 13, {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "Conv-dilation2": ("Conv", IMAGE, {"w": w(2, 3, 2, 2)}, 13, {"dilations": [2, 2]}),
    "Conv-groups3": ("Conv", IMAGE, {"w": w(6, 1, 3, 3)}, 13, {"group": 3, "pads": [1, 1, 1, 1]}),
    "Conv-asymmetric-pads": ("Conv", IMAGE, {"w": w(2, 3, 3, 3)}, 13, {"pads": [0, 1, 1, 2]}),
    "ConvTranspose": ("ConvTranspose", IMAGE, {"w": w(3, 2, 3, 3)}, 13, {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "Gemm": ("Gemm", (5,), {"w": w(4, 5), "b": w(4)}, 11, {"transB": 1}),
    "MatMul": ("MatMul", (5,), {"w": w(5, 3)}, 13, {}),
    "BatchNormalization": ("BatchNormalization", IMAGE, {"s": w(3, low=0.5, high=1.5), "b": w(3), "m": w(3),
                                                         "v": w(3, low=0.5, high=1.5)}, 13, {}),
    "Relu": ("Relu", (7,), {}, 13, {}),
    "LeakyRelu": ("LeakyRelu", (7,), {}, 13, {"alpha": 0.2}),
    "Sigmoid": ("Sigmoid", (7,), {}, 13, {}),
    "HardSigmoid": ("HardSigmoid", (7,), {}, 13, {}),
    "HardSwish": ("HardSwish", (7,), {}, 14, {}),
    "Tanh": ("Tanh", (7,), {}, 13, {}),
    "Erf": ("Erf", (7,), {}, 13, {}),
    "Gelu": ("Gelu", (7,), {}, 20, {}),
    "Clip-opset11": ("Clip", (7,), {"lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)}, 11, {}),
    "MaxPool": ("MaxPool", IMAGE, {}, 11, {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "MaxPool-overlapping": ("MaxPool", IMAGE, {}, 13, {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}),
    "AveragePool": ("AveragePool", IMAGE, {}, 13, {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "AveragePool-pads": ("AveragePool", IMAGE, {}, 13, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                        "count_include_pad": 1}),
    "AveragePool-exclude-pads": ("AveragePool", IMAGE, {}, 13, {"kernel_shape": [3, 3], "strides": [2, 2],
                                                                "pads": [1, 1, 1, 1]}),
    "AveragePool-ceil": ("AveragePool", (2, 7, 7), {}, 13, {"kernel_shape": [2, 2], "strides": [2, 2],
                                                            "ceil_mode": 1}),
    "GlobalAveragePool": ("GlobalAveragePool", IMAGE, {}, 13, {}),
    "Softmax-opset11": ("Softmax", (6,), {}, 11, {"axis": 1}),
    "Softmax-opset13": ("Softmax", (6,), {}, 13, {"axis": -1}),
    "LogSoftmax-opset11": ("LogSoftmax", (6,), {}, 11, {"axis": 1}),
    "LogSoftmax-opset13": ("LogSoftmax", (6,), {}, 13, {"axis": -1}),
    "Reshape": ("Reshape", IMAGE, {"shape": np.array([0, 6, -1], np.int64)}, 13, {}),
    "Flatten": ("Flatten", IMAGE, {}, 13, {"axis": 1}),
    "Transpose": ("Transpose", IMAGE, {}, 13, {"perm": [0, 2, 3, 1]}),
    "Concat": ("Concat", IMAGE, {"x": "x"}, 13, {"axis": 1}),
    "Slice": ("Slice", IMAGE, {"starts": np.array([1, 0], np.int64), "ends": np.array([3, 5], np.int64),
                               "axes": np.array([1, 3], np.int64)}, 13, {}),
    "Pad": ("Pad", IMAGE, {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 0], np.int64)}, 13, {"mode": "constant"}),
    "Pad-reflect": ("Pad", IMAGE, {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}, 13, {"mode": "reflect"}),
    "Resize-nearest": ("Resize", IMAGE, {"roi": None, "scales": np.array([1, 1, 2, 2], np.float32)}, 13,
                       {"mode": "nearest"}),
    "Resize-linear": ("Resize", IMAGE, {"roi": None, "scales": np.array([1, 1, 2, 2], np.float32)}, 13,
                      {"mode": "linear"}),
    "Resize-linear-sizes": ("Resize", IMAGE, {"roi": None, "scales": None, "sizes": np.array([4, 3, 9, 4], np.int64)},
                            13, {"mode": "linear", "coordinate_transformation_mode": "align_corners"}),
    "Add": ("Add", (5,), {"other": w(5)}, 13, {}),
    "Sub": ("Sub", (5,), {"other": w(5)}, 13, {}),
    "Mul": ("Mul", (5,), {"other": w(5)}, 13, {}),
    "Div": ("Div", (5,), {"other": w(5, low=0.5, high=2.0)}, 13, {}),
    "Pow": ("Pow", (5,), {"exponent": np.array(2.0, np.float32)}, 13, {}),
    "Sqrt": ("Sqrt", (5,), {}, 13, {}),
    "LayerNormalization": ("LayerNormalization", (4, 6), {"scale": w(6, low=0.5, high=1.5), "bias": w(6)}, 17,
                           {"axis": -1}),
    "ReduceMean-opset13": ("ReduceMean", IMAGE, {}, 13, {"axes": [2, 3], "keepdims": 0}),
    "ReduceMean-opset18": ("ReduceMean", IMAGE, {"axes": np.array([1], np.int64)}, 18, {"keepdims": 1}),
}
POSITIVE_INPUTS = {"Sqrt", "Pow"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=needs_maxpool_export) if c.startswith("MaxPool") else c
                                  for c in CASES])
def test_gradient_graph_per_op(case, tmp_path: Path):
    op, shape, extra, opset, attributes = CASES[case]
    model = single_op_model(op, shape, extra, opset=opset, **attributes)
    generator = np.random.default_rng(1)
    x = generator.uniform(0.2, 2.0, (4, *shape)) if op in POSITIVE_INPUTS else generator.normal(0, 1, (4, *shape))
    x = x.astype(np.float32)

    module = onnx_to_torch(model, tmp_path / f"{case}.onnx")
    expected_forward = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    converted = TorchBackend(module, ScoreKind.logits)
    np.testing.assert_allclose(converted.scores(torch.from_numpy(x)).numpy(), expected_forward, rtol=1e-5, atol=1e-5)

    graph = export_gradient_graph(module, ScoreKind.logits, shape, "test")
    runtime = OnnxRuntimeBackend(graph.SerializeToString(), read_info(graph), torch.device("cpu"))
    weights = torch.from_numpy(generator.normal(0, 1, expected_forward.shape).astype(np.float32))
    scores, grads = runtime.scores_and_grads(torch.from_numpy(x), weights)
    np.testing.assert_allclose(scores.numpy(), expected_forward, rtol=1e-5, atol=1e-5)

    reference = TorchBackend(module.double(), ScoreKind.logits)
    _, expected_grads = reference.scores_and_grads(torch.from_numpy(x).double(), weights.double())
    scale = float(expected_grads.abs().max()) or 1.0
    assert float((grads.double() - expected_grads).abs().max()) / scale < 1e-5
