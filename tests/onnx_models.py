"""ONNX models built node by node in the tests, as other frameworks write them."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def constant(name: str, array: np.ndarray) -> onnx.NodeProto:
    """Weights in a Constant node (TensorFlow and Paddle exports do this), not an initializer."""
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name + "_value"))


def single_op_model(op: str, input_shape: tuple[int, ...], extra_inputs: dict[str, np.ndarray] | None = None,
                    opset: int = 13, flatten: bool = True, input_dtype=TensorProto.FLOAT, **attributes) -> onnx.ModelProto:
    """x -> op(x, *extra) -> Flatten -> y [N, features], with a dynamic batch axis N."""
    extra_inputs = extra_inputs or {}
    nodes = [constant(name, array) for name, array in extra_inputs.items() if isinstance(array, np.ndarray)]
    # None leaves an optional input out; the string "x" feeds the model's input again.
    names = ["x"] + ["" if array is None else array if isinstance(array, str) else name
                     for name, array in extra_inputs.items()]
    nodes.append(helper.make_node(op, names, ["op_out"], name=f"{op.lower()}_0", **attributes))
    nodes.append(helper.make_node("Flatten", ["op_out"], ["y"], axis=1) if flatten
                 else helper.make_node("Identity", ["op_out"], ["y"]))
    graph = helper.make_graph(nodes, f"single_{op}",
                              [helper.make_tensor_value_info("x", input_dtype, ["N", *input_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="igcli-tests")
    model.ir_version = 7
    return model


def opset11_cnn(seed: int = 0) -> onnx.ModelProto:
    """A small CNN at opset 11 with every weight in a Constant node, ending in Softmax (axis 1)."""
    rng = np.random.default_rng(seed)

    def weights(*shape, scale=0.3):
        return rng.normal(0, scale, shape).astype(np.float32)

    nodes = [
        constant("w1", weights(4, 3, 3, 3)), constant("b1", weights(4, scale=0.1)),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        constant("gamma", rng.uniform(0.5, 1.5, 4).astype(np.float32)), constant("beta", weights(4, scale=0.1)),
        constant("mean", weights(4, scale=0.1)), constant("var", rng.uniform(0.5, 1.5, 4).astype(np.float32)),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p1"], ["f"], axis=1),
        constant("w2", weights(5, 4 * 4 * 4)), constant("b2", weights(5, scale=0.1)),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(nodes, "opset11_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], producer_name="igcli-tests")
    model.ir_version = 6
    onnx.checker.check_model(model)
    return model
