"""Per-op gradient checks for ONNX models: igcli's gradient graph (the ONNX graph differentiated
as ONNX, onnx_grad.py), run on onnxruntime, against (1) onnxruntime's own forward of the plain
model and (2) torch autograd in float64 on the model converted to torch by onnx2fx, an
independent implementation of each op."""
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from igcli.backends.base import ScoreKind
from igcli.backends.onnx.format import GradientGraphInfo
from igcli.backends.onnx.grad import build_gradient_model, to_float64
from igcli.backends.onnx.source import onnx_to_torch
from igcli.backends.onnx_backend import OnnxRuntimeBackend
from igcli.backends.torch_backend import TorchBackend
from igcli.errors import ModelError

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
    "ReduceSum": ("ReduceSum", IMAGE, {"axes": np.array([-1], np.int64)}, 13, {"keepdims": 0}),
    "ReduceL2": ("ReduceL2", IMAGE, {}, 13, {"axes": [1]}),
    "ReduceMax": ("ReduceMax", IMAGE, {}, 13, {"axes": [2, 3]}),
    "Conv-same-upper": ("Conv", IMAGE, {"w": w(2, 3, 2, 2)}, 11, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    "Conv-1d": ("Conv", (3, 9), {"w": w(4, 3, 3)}, 13, {"strides": [2], "pads": [1, 0]}),
    "Gather-token": ("Gather", (4, 5), {"i": np.array(0, np.int64)}, 13, {"axis": 1}),
    "Gather-rows": ("Gather", (4, 5), {"i": np.array([3, -1, 0], np.int64)}, 13, {"axis": 2}),
    "Expand": ("Expand", (1, 5), {"shape": np.array([1, 3, 5], np.int64)}, 13, {}),
    "Max": ("Max", (5,), {"o": w(5)}, 13, {}),
    "Min": ("Min", (5,), {"o": w(5)}, 13, {}),
    "Sum": ("Sum", (5,), {"o": w(5), "x": "x"}, 13, {}),
    "Mean": ("Mean", (5,), {"x": "x"}, 13, {}),
    "PRelu": ("PRelu", IMAGE, {"slope": w(3, 1, 1)}, 13, {}),
    "Elu": ("Elu", (7,), {}, 13, {"alpha": 0.7}),
    "Softplus": ("Softplus", (7,), {}, 13, {}),
    "Exp": ("Exp", (7,), {}, 13, {}),
    "Log": ("Log", (7,), {}, 13, {}),
    "Reciprocal": ("Reciprocal", (7,), {}, 13, {}),
    "Abs": ("Abs", (7,), {}, 13, {}),
    "Neg": ("Neg", (7,), {}, 13, {}),
    "Clip-relu6": ("Clip", (7,), {"lo": np.array(0.0, np.float32), "hi": np.array(0.6, np.float32)}, 13, {}),
    "Squeeze": ("Squeeze", (1, 5), {"axes": np.array([1], np.int64)}, 13, {}),
    "Unsqueeze": ("Unsqueeze", (5,), {"axes": np.array([1], np.int64)}, 13, {}),
    "Unsqueeze-opset9": ("Unsqueeze", (5,), {}, 9, {"axes": [1]}),
    "MatMul-batched": ("MatMul", (4, 5), {"w": w(1, 5, 2)}, 13, {}),
    "MatMul-self": ("MatMul", (4, 4), {"x": "x"}, 13, {}),
    "Gemm-transA": ("Gemm", (5,), {"w": w(5, 3)}, 13, {"alpha": 0.5}),
    "Pad-edge": ("Pad", IMAGE, {"pads": np.array([0, 0, 2, 1, 0, 0, 0, 2], np.int64)}, 13, {"mode": "edge"}),
    "Slice-negative": ("Slice", IMAGE, {"starts": np.array([-4], np.int64), "ends": np.array([-1], np.int64),
                                        "axes": np.array([-1], np.int64)}, 13, {}),
    "Slice-flip-channels": ("Slice", IMAGE, {"starts": np.array([-1], np.int64),
                                             "ends": np.array([np.iinfo(np.int64).min], np.int64),
                                             "axes": np.array([1], np.int64), "steps": np.array([-1], np.int64)}, 13, {}),
    "Slice-step2": ("Slice", IMAGE, {"starts": np.array([1, 0], np.int64), "ends": np.array([6, 5], np.int64),
                                     "axes": np.array([2, 3], np.int64), "steps": np.array([2, 1], np.int64)}, 13, {}),
    "Resize-cubic": ("Resize", IMAGE, {"roi": None, "scales": np.array([1, 1, 1.5, 2], np.float32)}, 13,
                     {"mode": "cubic"}),
    "Upsample-opset9": ("Upsample", IMAGE, {"scales": np.array([1, 1, 2, 2], np.float32)}, 9, {"mode": "nearest"}),
    "InstanceNormalization": ("InstanceNormalization", IMAGE, {"s": w(3), "b": w(3)}, 13, {}),
    "LRN": ("LRN", (5, 3, 3), {}, 13, {"size": 3, "alpha": 0.5, "beta": 0.75, "bias": 2.0}),
    "GlobalMaxPool": ("GlobalMaxPool", IMAGE, {}, 13, {}),
    "Dropout": ("Dropout", (5,), {}, 13, {}),
    "Identity": ("Identity", (5,), {}, 13, {}),
}
POSITIVE_INPUTS = {"Sqrt", "Pow", "Log", "Reciprocal"}


FIXED_BATCH = {"Resize-linear-sizes": 4}  # its sizes input fixes the batch axis too


def gradient_graph(model, shape, fixed_batch=None):
    graph, fixed_batch = build_gradient_model(model, ScoreKind.logits, shape, fixed_batch)
    info = GradientGraphInfo(ScoreKind.logits, "", "", shape, fixed_batch)
    return OnnxRuntimeBackend(graph.SerializeToString(), info, torch.device("cpu"))


@pytest.mark.parametrize("case", list(CASES))
def test_gradient_graph_per_op(case, tmp_path: Path):
    op, shape, extra, opset, attributes = CASES[case]
    model = single_op_model(op, shape, extra, opset=opset, **attributes)
    generator = np.random.default_rng(1)
    x = generator.uniform(0.2, 2.0, (4, *shape)) if op in POSITIVE_INPUTS else generator.normal(0, 1, (4, *shape))
    x = x.astype(np.float32)
    expected_forward = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]

    runtime = gradient_graph(model, shape, FIXED_BATCH.get(case))
    weights = torch.from_numpy(generator.normal(0, 1, expected_forward.shape).astype(np.float32))
    scores, grads = runtime.scores_and_grads(torch.from_numpy(x), weights)
    np.testing.assert_allclose(scores.numpy(), expected_forward, rtol=1e-5, atol=1e-5)

    reference = TorchBackend(onnx_to_torch(to_float64(model), tmp_path / f"{case}.onnx").double(), ScoreKind.logits)
    _, expected_grads = reference.scores_and_grads(torch.from_numpy(x).double(), weights.double())
    scale = float(expected_grads.abs().max()) or 1.0
    assert float((grads.double() - expected_grads).abs().max()) / scale < 1e-5


def test_split_and_concat_send_each_part_its_gradient():
    """x -> Split into 2 + 3 columns -> Concat(b, a, a): column gradients add up where a part is reused."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1),
             helper.make_node("Concat", ["b", "a", "a"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7])],
                              initializer=[helper.make_tensor("sizes", TensorProto.INT64, [2], [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    weights = torch.arange(14, dtype=torch.float32).reshape(2, 7)
    _, grads = gradient_graph(model, (5,)).scores_and_grads(torch.randn(2, 5), weights)
    # y = [b0 b1 b2 a0 a1 a0 a1]: da0 = w3 + w5, da1 = w4 + w6, db_k = w_k.
    expected = torch.stack([weights[:, 3] + weights[:, 5], weights[:, 4] + weights[:, 6],
                            weights[:, 0], weights[:, 1], weights[:, 2]], dim=1)
    torch.testing.assert_close(grads, expected)


def test_where_and_casts_through_double_against_float64_autograd(tmp_path: Path):
    """y = Where(x > 0, x, o) * Cast(Cast(x, double), float): two gradient paths into x."""
    from onnx import TensorProto, helper

    other = w(5)
    nodes = [helper.make_node("Greater", ["x", "zero"], ["c"]), helper.make_node("Where", ["c", "x", "o"], ["picked"]),
             helper.make_node("Cast", ["x"], ["wide"], to=TensorProto.DOUBLE),
             helper.make_node("Cast", ["wide"], ["narrow"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["picked", "narrow"], ["y"])]
    graph = helper.make_graph(nodes, "where", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                                           helper.make_tensor("o", TensorProto.FLOAT, [5], other)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    weights = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    _, grads = gradient_graph(model, (5,)).scores_and_grads(x, weights)
    x64 = x.double().requires_grad_(True)
    y = torch.where(x64 > 0, x64, torch.from_numpy(other).double()) * x64
    (y * weights.double()).sum().backward()
    torch.testing.assert_close(grads.double(), x64.grad, rtol=1e-6, atol=1e-6)


def test_an_op_without_a_rule_is_refused_with_its_name_and_node(tmp_path: Path):
    from igcli.backends.onnx.describe import describe

    model = single_op_model("Einsum", (3, 3), equation="bii->bi")
    assert describe(model, tmp_path / "einsum.onnx")["ops_without_gradient_rule"] == ["Einsum"]
    with pytest.raises(ModelError, match=r"^igcli cannot differentiate op Einsum \(node 'einsum_0'\)"):
        build_gradient_model(model, ScoreKind.logits, (3, 3), None)
