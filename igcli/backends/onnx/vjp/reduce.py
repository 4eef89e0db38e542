"""Rules for reductions, softmax and normalizations."""
from __future__ import annotations

import numpy as np

from igcli.backends.onnx.vjp.common import attribute, constant_value, float_mask, normal_axis, only_first, static_size
from igcli.backends.onnx.vjp.context import Context
from igcli.errors import ModelError


def _reduce_axes(ctx: Context, node, rank: int) -> list[int]:
    axes = attribute(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = constant_value(ctx, node.input[1], f"{node.op_type} axes")
    if axes is None or len(axes) == 0:
        if attribute(node, "noop_with_empty_axes", 0):
            return []
        return list(range(rank))
    return sorted(normal_axis(int(a), rank) for a in np.reshape(axes, -1))


def _reduce(ctx: Context, node, grads):
    g = grads[0]
    x = node.input[0]
    if g is None or not ctx.needs(x):
        return [None] * len(node.input)
    b = ctx.build
    rank = ctx.probe.rank(x)
    axes = _reduce_axes(ctx, node, rank)
    if not axes:
        return only_first(node, g)
    kept = g if attribute(node, "keepdims", 1) else b.op("Unsqueeze", [g, b.ints(axes)])
    y = node.output[0] if attribute(node, "keepdims", 1) else b.op("Unsqueeze", [node.output[0], b.ints(axes)])
    spread = b.op("Expand", [kept, b.op("Shape", [x])])
    if node.op_type == "ReduceSum":
        grad = spread
    elif node.op_type == "ReduceMean":
        count = int(np.prod([static_size(ctx, x, a, "ReduceMean") for a in axes]))
        grad = b.op("Mul", [spread, b.scalar(1.0 / count)])
    elif node.op_type == "ReduceSumSquare":
        grad = b.op("Mul", [spread, b.op("Mul", [x, b.scalar(2.0)])])
    elif node.op_type == "ReduceL2":
        grad = b.op("Mul", [spread, b.op("Div", [x, y])])
    else:  # ReduceMax / ReduceMin: the extreme entries share the gradient, as torch's amax does
        hits = float_mask(ctx, b.op("Equal", [x, y]))
        count = b.op("ReduceSum", [hits, b.ints(axes)], keepdims=1)
        grad = b.op("Mul", [spread, b.op("Div", [hits, count])])
    return only_first(node, grad)


def _softmax(ctx: Context, node, grads):
    g = grads[0]
    if g is None or not ctx.needs(node.input[0]):
        return [None]
    b, y = ctx.build, node.output[0]
    axis = b.ints([attribute(node, "axis", -1)])
    if node.op_type == "Softmax":
        total = b.op("ReduceSum", [b.op("Mul", [g, y]), axis], keepdims=1)
        return [b.op("Mul", [y, b.op("Sub", [g, total])])]
    total = b.op("ReduceSum", [g, axis], keepdims=1)
    return [b.op("Sub", [g, b.op("Mul", [b.op("Exp", [y]), total])])]


def _channel_vector(b, name: str, rank: int) -> str:
    """A per-channel vector [C] shaped [C, 1, ..., 1] to broadcast over [N, C, ...]."""
    return b.op("Reshape", [name, b.ints([-1] + [1] * (rank - 2))])


def _batch_norm(ctx: Context, node, grads):
    g = grads[0]
    x = node.input[0]
    if g is None or not ctx.needs(x):
        return [None] * len(node.input)
    if attribute(node, "training_mode", 0) or any(ctx.needs(n) for n in node.input[1:]):
        raise ModelError("BatchNormalization in training mode or with computed statistics is not supported")
    b = ctx.build
    scale, _, _, var = node.input[1:5]
    factor = b.op("Div", [scale, b.op("Sqrt", [b.op("Add", [var, b.scalar(attribute(node, "epsilon", 1e-5))])])])
    return only_first(node, b.op("Mul", [g, _channel_vector(b, factor, ctx.probe.rank(x))]))


def _normalized_grad(ctx: Context, x: str, gh: str, axes: list[int], epsilon: float) -> str:
    """d/dx of (x - mean) / sqrt(var + eps) over ``axes``, applied to ``gh``."""
    b = ctx.build
    count = int(np.prod([static_size(ctx, x, a, "normalization") for a in axes]))
    axes_name = b.ints(axes)

    def mean(name):
        return b.op("Mul", [b.op("ReduceSum", [name, axes_name], keepdims=1), b.scalar(1.0 / count)])

    centered = b.op("Sub", [x, mean(x)])
    inverse = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [mean(b.op("Mul", [centered, centered])),
                                                            b.scalar(epsilon)])])])
    normalized = b.op("Mul", [centered, inverse])
    inner = b.op("Sub", [b.op("Sub", [gh, mean(gh)]), b.op("Mul", [normalized, mean(b.op("Mul", [gh, normalized]))])])
    return b.op("Mul", [inverse, inner])


def _layer_norm(ctx: Context, node, grads):
    g = grads[0]
    x = node.input[0]
    if g is None or not ctx.needs(x):
        return [None] * len(node.input)
    if any(ctx.needs(n) for n in node.input[1:]):
        raise ModelError("LayerNormalization with computed scale or bias is not supported")
    rank = ctx.probe.rank(x)
    axes = list(range(normal_axis(attribute(node, "axis", -1), rank), rank))
    gh = ctx.build.op("Mul", [g, node.input[1]])
    return only_first(node, _normalized_grad(ctx, x, gh, axes, attribute(node, "epsilon", 1e-5)))


def _instance_norm(ctx: Context, node, grads):
    g = grads[0]
    x = node.input[0]
    if g is None or not ctx.needs(x):
        return [None] * len(node.input)
    rank = ctx.probe.rank(x)
    gh = ctx.build.op("Mul", [g, _channel_vector(ctx.build, node.input[1], rank)])
    return only_first(node, _normalized_grad(ctx, x, gh, list(range(2, rank)), attribute(node, "epsilon", 1e-5)))


RULES = {"ReduceSum": _reduce, "ReduceMean": _reduce, "ReduceSumSquare": _reduce, "ReduceL2": _reduce,
    "ReduceMax": _reduce, "ReduceMin": _reduce, "Softmax": _softmax, "LogSoftmax": _softmax,
    "BatchNormalization": _batch_norm, "LayerNormalization": _layer_norm, "InstanceNormalization": _instance_norm}
