"""Helpers the vector-Jacobian rules share: attributes, shapes from the probe, broadcasting, masks."""
from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from igcli.backends.onnx.vjp.context import Context
from igcli.errors import ModelError

INT64_MAX = np.iinfo(np.int64).max


def attribute(node, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def probe_shapes(ctx: Context, name: str) -> list[tuple[int, ...]]:
    return [table[name] for table in ctx.probe.shapes]


def unbroadcast(ctx: Context, grad: str, out_shapes: list[tuple[int, ...]], target: str) -> str | None:
    """``grad`` (shaped like the broadcast result) summed down to ``target``'s shape."""
    if not ctx.needs(target):
        return None
    axes: set[int] = set()
    reshape = False
    for out, shape in zip(out_shapes, probe_shapes(ctx, target)):
        lead = len(out) - len(shape)
        reshape |= lead > 0
        axes.update(range(lead))
        axes.update(lead + i for i, d in enumerate(shape) if d == 1 and out[lead + i] != 1)
    b = ctx.build
    if axes:
        grad = b.op("ReduceSum", [grad, b.ints(sorted(axes))], keepdims=1)
    if axes or reshape:
        grad = b.op("Reshape", [grad, b.op("Shape", [target])])
    return grad


def zeros_like(ctx: Context, name: str) -> str:
    b = ctx.build
    return b.op("ConstantOfShape", [b.op("Shape", [name])], value=numpy_helper.from_array(np.zeros(1, np.float32)))


def float_mask(ctx: Context, condition: str) -> str:
    return ctx.build.op("Cast", [condition], to=1)


def normal_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def only_first(node, grad):
    return [grad] + [None] * (len(node.input) - 1)


def static_size(ctx: Context, name: str, axis: int, what: str) -> int:
    if ctx.probe.batch_dependent(name)[axis]:
        raise ModelError(f"{what} along the batch axis is not supported")
    return ctx.probe.shape(name)[axis]


def constant_value(ctx: Context, name: str, what: str) -> np.ndarray:
    value = ctx.constant(name)
    if value is None:
        raise ModelError(f"{what} ('{name}') is not a constant")
    return np.asarray(value)


def axis_matrix(node, inputs: list[tuple[str, np.ndarray | None]], axis: int, rank: int, size: int) -> np.ndarray:
    """M [size, out] with out = M^T in along spatial ``axis`` for a separable linear node, measured
    by running the node itself on onnxruntime over the unit vectors of that axis."""
    import onnx
    import onnxruntime as ort

    shape = [size] + [1] * (rank - 1)
    shape[axis] = size
    basis = np.zeros(shape, np.float32)
    for j in range(size):
        basis[(j,) + (0,) * (axis - 1) + (j,) + (0,) * (rank - axis - 1)] = 1.0
    feeds = {"basis": basis, **{name: value for name, value in inputs if value is not None}}
    names = ["basis"] + [name if value is not None else "" for name, value in inputs]
    probe_node = helper.make_node(node.op_type, names, ["out"], **{a.name: helper.get_attribute_value(a)
                                                                    for a in node.attribute})
    graph = helper.make_graph([probe_node], "axis_matrix",
                              [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                               for name, v in feeds.items()],
                              [onnx.ValueInfoProto(name="out")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(["out"], feeds)[0]
    index = [slice(None)] + [0] * (rank - 1)
    index[axis] = slice(None)
    return out[tuple(index)]


def apply_axis_matrices(ctx: Context, g: str, matrices: dict[int, np.ndarray], rank: int) -> str:
    b = ctx.build
    for axis, matrix in matrices.items():
        if axis == rank - 1:
            g = b.op("MatMul", [g, b.const(matrix.T)])
        elif axis == rank - 2:
            g = b.op("MatMul", [b.const(matrix), g])
        else:
            raise ModelError("linear maps over more than two spatial axes are not supported")
    return g


def explicit_pads(node, in_sizes, out_sizes, kernel, strides, dilations) -> list[int]:
    n = len(kernel)
    auto_pad = attribute(node, "auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        return [int(p) for p in attribute(node, "pads", [0] * (2 * n))]
    if auto_pad == "VALID":
        return [0] * (2 * n)
    begins, ends = [], []
    for i in range(n):
        total = max((out_sizes[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_sizes[i], 0)
        small = total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return begins + ends
