"""Rules for pooling, resizing and local response normalization."""
from __future__ import annotations

import math

import numpy as np
from onnx import helper, numpy_helper

from igcli.backends.onnx.vjp.common import (
    apply_axis_matrices,
    attribute,
    axis_matrix,
    constant_value,
    explicit_pads,
    float_mask,
    only_first,
)
from igcli.backends.onnx.vjp.context import Context
from igcli.errors import ModelError


def _global_pool(ctx: Context, node, grads):
    g = grads[0]
    x = node.input[0]
    if g is None or not ctx.needs(x):
        return [None]
    b = ctx.build
    spread = b.op("Expand", [g, b.op("Shape", [x])])
    if node.op_type == "GlobalAveragePool":
        count = int(np.prod(ctx.probe.shape(x)[2:]))
        return [b.op("Mul", [spread, b.scalar(1.0 / count)])]
    hits = float_mask(ctx, b.op("Equal", [x, node.output[0]]))
    count = b.op("ReduceSum", [hits, b.ints(list(range(2, ctx.probe.rank(x))))], keepdims=1)
    return [b.op("Mul", [spread, b.op("Div", [hits, count])])]


def _max_pool(ctx: Context, node, grads):
    g = grads[0]
    x = node.input[0]
    if g is None or not ctx.needs(x):
        return [None]
    if attribute(node, "storage_order", 0):
        raise ModelError("MaxPool with storage_order 1 is not supported")
    b = ctx.build
    attributes = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    _, indices = b.op("MaxPool", [x], outputs=2, **attributes)
    size = b.op("Reshape", [b.op("Size", [x]), b.ints([1])])
    zeros = b.op("ConstantOfShape", [size], value=numpy_helper.from_array(np.zeros(1, np.float32)))
    flat = b.op("ScatterElements", [zeros, b.op("Reshape", [indices, b.ints([-1])]), b.op("Reshape", [g, b.ints([-1])])],
                axis=0, reduction="add")
    return [b.op("Reshape", [flat, b.op("Shape", [x])])]


def _average_pool(ctx: Context, node, grads):
    g = grads[0]
    x = node.input[0]
    if g is None or not ctx.needs(x):
        return [None]
    rank = ctx.probe.rank(x)
    in_sizes, out_sizes = ctx.probe.shape(x)[2:], ctx.probe.shape(node.output[0])[2:]
    kernel = list(attribute(node, "kernel_shape"))
    n = len(kernel)
    strides = list(attribute(node, "strides", [1] * n))
    dilations = list(attribute(node, "dilations", [1] * n))
    pads = explicit_pads(node, in_sizes, out_sizes, kernel, strides, dilations)
    matrices = {}
    for i in range(n):
        dilated = {"dilations": [dilations[j] if j == i else 1 for j in range(n)]} if dilations[i] != 1 else {}
        one = helper.make_node("AveragePool", [], [], kernel_shape=[kernel[j] if j == i else 1 for j in range(n)],
                               strides=[strides[j] if j == i else 1 for j in range(n)], **dilated,
                               pads=[pads[j] if j == i else 0 for j in range(n)] + [pads[n + j] if j == i else 0 for j in range(n)],
                               ceil_mode=attribute(node, "ceil_mode", 0),
                               count_include_pad=attribute(node, "count_include_pad", 0))
        matrices[2 + i] = axis_matrix(one, [], 2 + i, rank, in_sizes[i])
    return [apply_axis_matrices(ctx, g, matrices, rank)]


def _resize(ctx: Context, node, grads):
    g = grads[0]
    x = node.input[0]
    if g is None or not ctx.needs(x):
        return [None] * len(node.input)
    if attribute(node, "axes") is not None:
        raise ModelError("Resize with axes is not supported")
    rank = ctx.probe.rank(x)
    in_shape, out_shape = ctx.probe.shape(x), ctx.probe.shape(node.output[0])
    if in_shape[:2] != out_shape[:2]:
        raise ModelError("Resize over the batch or channel axis is not supported")
    inputs = list(node.input) + ["", "", ""]
    roi = constant_value(ctx, inputs[1], "Resize roi").astype(np.float32) if inputs[1] else None
    scales = constant_value(ctx, inputs[2], "Resize scales") if inputs[2] else None
    matrices = {}
    for axis in range(2, rank):
        if in_shape[axis] == out_shape[axis]:
            continue
        if scales is not None and np.size(scales):
            feeds = [("roi", roi), ("scales", np.asarray([scales[axis] if d == axis else 1.0 for d in range(rank)],
                                                         np.float32)), ("sizes", None)]
        else:
            sizes = [in_shape[axis]] + [1] * (rank - 1)
            sizes[axis] = out_shape[axis]
            feeds = [("roi", roi), ("scales", None), ("sizes", np.asarray(sizes, np.int64))]
        matrices[axis] = axis_matrix(node, feeds, axis, rank, in_shape[axis])
    return only_first(node, apply_axis_matrices(ctx, g, matrices, rank))


def _lrn(ctx: Context, node, grads):
    g = grads[0]
    x = node.input[0]
    if g is None or not ctx.needs(x):
        return [None]
    b = ctx.build
    size = attribute(node, "size")
    alpha, beta, bias = attribute(node, "alpha", 1e-4), attribute(node, "beta", 0.75), attribute(node, "bias", 1.0)
    channels = ctx.probe.shape(x)[1]
    # Window sums over channels as a 1x1-kernel convolution with a banded [C, C] matrix.
    band = np.zeros((channels, channels, 1, 1), np.float32)
    for c in range(channels):
        low, high = c - (size - 1) // 2, c + int(math.ceil((size - 1) / 2))
        band[c, max(low, 0):min(high, channels - 1) + 1] = 1.0
    band_name = b.const(band)
    rank = ctx.probe.rank(x)
    if rank != 4:
        raise ModelError("LRN on inputs other than 4-D is not supported")
    squares = b.op("Conv", [b.op("Mul", [x, x]), band_name])
    base = b.op("Add", [b.op("Mul", [squares, b.scalar(alpha / size)]), b.scalar(bias)])
    first = b.op("Mul", [g, b.op("Pow", [base, b.scalar(-beta)])])
    inner = b.op("Mul", [b.op("Mul", [g, x]), b.op("Pow", [base, b.scalar(-beta - 1.0)])])
    # The band is symmetric in c for odd sizes; its transpose spreads back for any size.
    spread = b.op("Conv", [inner, b.const(np.ascontiguousarray(band.transpose(1, 0, 2, 3)))])
    second = b.op("Mul", [b.op("Mul", [spread, x]), b.scalar(-2.0 * alpha * beta / size)])
    return [b.op("Add", [first, second])]


RULES = {"GlobalAveragePool": _global_pool, "GlobalMaxPool": _global_pool, "MaxPool": _max_pool,
    "AveragePool": _average_pool, "Resize": _resize, "LRN": _lrn}
