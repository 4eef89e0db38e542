"""Rules for ops that move values without computing: concat, split, slice, pad, expand, gather."""
from __future__ import annotations

import numpy as np
from onnx import helper

from igcli.backends.onnx.vjp.common import (
    apply_axis_matrices,
    attribute,
    axis_matrix,
    constant_value,
    normal_axis,
    only_first,
    probe_shapes,
    static_size,
    unbroadcast,
    zeros_like,
)
from igcli.backends.onnx.vjp.context import Context
from igcli.errors import ModelError


def _concat(ctx: Context, node, grads):
    g = grads[0]
    if g is None:
        return [None] * len(node.input)
    rank = ctx.probe.rank(node.output[0])
    axis = normal_axis(attribute(node, "axis"), rank)
    sizes = [static_size(ctx, name, axis, "Concat") for name in node.input]
    parts = ctx.build.op("Split", [g, ctx.build.ints(sizes)], outputs=len(sizes), axis=axis)
    parts = [parts] if isinstance(parts, str) else parts
    return [part if ctx.needs(name) else None for part, name in zip(parts, node.input)]


def _split(ctx: Context, node, grads):
    if not ctx.needs(node.input[0]):
        return [None] * len(node.input)
    rank = ctx.probe.rank(node.input[0])
    axis = normal_axis(attribute(node, "axis", 0), rank)
    parts = [g if g is not None else zeros_like(ctx, name) for g, name in zip(grads, node.output)]
    return only_first(node, ctx.build.op("Concat", parts, axis=axis))


def _slice(ctx: Context, node, grads):
    g = grads[0]
    data = node.input[0]
    if g is None or not ctx.needs(data):
        return [None] * len(node.input)
    shape, rank = ctx.probe.shape(data), ctx.probe.rank(data)
    starts = constant_value(ctx, node.input[1], "Slice starts")
    ends = constant_value(ctx, node.input[2], "Slice ends")
    axes = constant_value(ctx, node.input[3], "Slice axes") if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
    steps = constant_value(ctx, node.input[4], "Slice steps") if len(node.input) > 4 and node.input[4] else np.ones(len(starts))
    pads = [0] * (2 * rank)
    out_shape = ctx.probe.shape(node.output[0])
    if any(int(step) != 1 for step in steps):
        return only_first(node, _strided_slice_grad(ctx, g, shape, out_shape, starts, ends, axes, steps))
    for start, step, axis in zip(starts, steps, axes):
        axis = normal_axis(int(axis), rank)
        size = static_size(ctx, data, axis, "Slice")
        start = int(start) + size if start < 0 else int(start)
        start = min(max(start, 0), size)
        pads[axis], pads[rank + axis] = start, size - start - out_shape[axis]
    return only_first(node, ctx.build.op("Pad", [g, ctx.build.ints(pads)]))


def _strided_slice_grad(ctx: Context, g: str, shape, out_shape, starts, ends, axes, steps) -> str:
    """The gradient of a Slice with any steps (a flip is step -1): along each sliced axis, the
    output's gradient goes back to the input positions the slice read, by a one-hot product."""
    b, rank = ctx.build, len(shape)
    current = list(out_shape)
    for start, end, step, axis in zip(starts, ends, steps, axes):
        axis = normal_axis(int(axis), rank)
        if axis == 0:
            raise ModelError("Slice along the batch axis is not supported")
        size = int(shape[axis])
        read = np.arange(size)[slice(int(start), int(end), int(step))]
        onehot = np.zeros((len(read), size), np.float32)
        onehot[np.arange(len(read)), read] = 1.0
        trailing = int(np.prod(current[axis + 1:], dtype=np.int64))
        folded = b.op("Reshape", [g, b.ints([-1, len(read), trailing])])
        spread = b.op("Einsum", [folded, b.const(onehot)], equation="aip,il->alp")
        current[axis] = size
        g = b.op("Reshape", [spread, b.ints([-1] + current[1:])])
    return g


def _pad(ctx: Context, node, grads):
    g = grads[0]
    data = node.input[0]
    if g is None or not ctx.needs(data):
        return [None] * len(node.input)
    rank = ctx.probe.rank(data)
    pads = [int(p) for p in constant_value(ctx, node.input[1], "Pad pads")]
    if len(node.input) > 3 and node.input[3]:
        axes = [normal_axis(int(a), rank) for a in constant_value(ctx, node.input[3], "Pad axes")]
    else:
        axes = list(range(rank))
    if any(p < 0 for p in pads):
        raise ModelError("Pad with negative pads is not supported")
    count = len(axes)
    mode = attribute(node, "mode", "constant")
    if mode != "constant":  # reflect, edge, wrap: linear along each padded axis
        matrices = {}
        for index, axis in enumerate(axes):
            if pads[index] or pads[count + index]:
                one = [0] * (2 * rank)
                one[axis], one[rank + axis] = pads[index], pads[count + index]
                size = static_size(ctx, data, axis, "Pad")
                matrices[axis] = axis_matrix(helper.make_node("Pad", [], [], mode=mode),
                                              [("pads", np.asarray(one, np.int64))], axis, rank, size)
        return only_first(node, apply_axis_matrices(ctx, g, matrices, rank))
    starts, ends, sliced = [], [], []
    for index, axis in enumerate(axes):
        before, after = pads[index], pads[count + index]
        if before or after:
            starts.append(before)
            ends.append(before + static_size(ctx, data, axis, "Pad"))
            sliced.append(axis)
    b = ctx.build
    if not sliced:
        return only_first(node, g)
    return only_first(node, b.op("Slice", [g, b.ints(starts), b.ints(ends), b.ints(sliced)]))


def _expand(ctx: Context, node, grads):
    g = grads[0]
    if g is None:
        return [None, None]
    return [unbroadcast(ctx, g, probe_shapes(ctx, node.output[0]), node.input[0]), None]


def _gather(ctx: Context, node, grads):
    g = grads[0]
    data = node.input[0]
    if g is None or not ctx.needs(data):
        return [None, None]
    rank = ctx.probe.rank(data)
    axis = normal_axis(attribute(node, "axis", 0), rank)
    size = static_size(ctx, data, axis, "Gather")
    indices = constant_value(ctx, node.input[1], "Gather indices").reshape(-1).astype(np.int64)
    indices = np.where(indices < 0, indices + size, indices)
    onehot = np.zeros((len(indices), size), np.float32)
    onehot[np.arange(len(indices)), indices] = 1.0
    trailing = [static_size(ctx, data, d, "Gather") for d in range(axis + 1, rank)]
    b = ctx.build
    folded = b.op("Reshape", [g, b.ints([-1, len(indices), int(np.prod(trailing, dtype=np.int64))])])
    spread = b.op("Einsum", [folded, b.const(onehot)], equation="aip,il->alp")
    return [b.op("Reshape", [spread, b.op("Shape", [data])]), None]


RULES = {"Concat": _concat, "Split": _split, "Slice": _slice, "Pad": _pad, "Expand": _expand, "Gather": _gather}
