"""Vector-Jacobian products of ONNX ops, written as ONNX nodes (opset 17 semantics).

Each rule takes (context, forward node, gradients of its outputs, None where none flows) and
returns the gradient of each input (None where none is needed). Only inputs that depend on the
model's input get one: weights, shapes and indices are constants of the backward graph.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import helper, numpy_helper

from igcli.errors import ModelError
from igcli.backends.onnx.grad import Context

INT64_MAX = np.iinfo(np.int64).max


def attribute(node, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def unsupported(model, active: set[str]) -> list[tuple[str, str]]:
    """(op, node name) of each node on the gradient's path that has no rule."""
    found = []
    for index, node in enumerate(model.graph.node):
        on_path = any(name in active for name in node.input) and any(name in active for name in node.output)
        if on_path and node.op_type not in RULES:
            found.append((node.op_type if not node.domain or node.domain == "ai.onnx" else f"{node.domain}.{node.op_type}",
                          node.name or f"#{index}"))
    return found


# ---- helpers --------------------------------------------------------------------------------

def _shapes(ctx: Context, name: str) -> list[tuple[int, ...]]:
    return [table[name] for table in ctx.probe.shapes]


def unbroadcast(ctx: Context, grad: str, out_shapes: list[tuple[int, ...]], target: str) -> str | None:
    """``grad`` (shaped like the broadcast result) summed down to ``target``'s shape."""
    if not ctx.needs(target):
        return None
    axes: set[int] = set()
    reshape = False
    for out, shape in zip(out_shapes, _shapes(ctx, target)):
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


def _zeros_like(ctx: Context, name: str) -> str:
    b = ctx.build
    return b.op("ConstantOfShape", [b.op("Shape", [name])], value=numpy_helper.from_array(np.zeros(1, np.float32)))


def _mask(ctx: Context, condition: str) -> str:
    return ctx.build.op("Cast", [condition], to=1)


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _only_first(node, grad):
    return [grad] + [None] * (len(node.input) - 1)


def _static(ctx: Context, name: str, axis: int, what: str) -> int:
    if ctx.probe.batch_dependent(name)[axis]:
        raise ModelError(f"{what} along the batch axis is not supported")
    return ctx.probe.shape(name)[axis]


def _value(ctx: Context, name: str, what: str) -> np.ndarray:
    value = ctx.constant(name)
    if value is None:
        raise ModelError(f"{what} ('{name}') is not a constant")
    return np.asarray(value)


# ---- unary element-wise ---------------------------------------------------------------------

def _unary(formula):
    def rule(ctx: Context, node, grads):
        g = grads[0]
        if g is None or not ctx.needs(node.input[0]):
            return [None] * len(node.input)
        return _only_first(node, formula(ctx.build, node, node.input[0], node.output[0], g))
    return rule


def _relu(b, node, x, y, g):
    return b.op("Where", [b.op("Greater", [x, b.scalar(0.0)]), g, b.scalar(0.0)])


def _leaky_relu(b, node, x, y, g):
    alpha = attribute(node, "alpha", 0.01)
    return b.op("Where", [b.op("Greater", [x, b.scalar(0.0)]), g, b.op("Mul", [g, b.scalar(alpha)])])


def _elu(b, node, x, y, g):
    alpha = attribute(node, "alpha", 1.0)
    return b.op("Where", [b.op("Greater", [x, b.scalar(0.0)]), g,
                          b.op("Mul", [g, b.op("Add", [y, b.scalar(alpha)])])])


def _sigmoid(b, node, x, y, g):
    return b.op("Mul", [g, b.op("Mul", [y, b.op("Sub", [b.scalar(1.0), y])])])


def _tanh(b, node, x, y, g):
    return b.op("Mul", [g, b.op("Sub", [b.scalar(1.0), b.op("Mul", [y, y])])])


def _hard_sigmoid(b, node, x, y, g):
    alpha, beta = attribute(node, "alpha", 0.2), attribute(node, "beta", 0.5)
    v = b.op("Add", [b.op("Mul", [x, b.scalar(alpha)]), b.scalar(beta)])
    inside = b.op("And", [b.op("Greater", [v, b.scalar(0.0)]), b.op("Less", [v, b.scalar(1.0)])])
    return b.op("Mul", [b.op("Mul", [g, _mask_b(b, inside)]), b.scalar(alpha)])


def _hard_swish(b, node, x, y, g):
    # torch: 0 below -3, g (x/3 + 1/2) on [-3, 3], g above 3.
    slope = b.op("Add", [b.op("Mul", [x, b.scalar(1 / 3)]), b.scalar(0.5)])
    slope = b.op("Where", [b.op("Greater", [x, b.scalar(3.0)]), b.scalar(1.0), slope])
    slope = b.op("Where", [b.op("Less", [x, b.scalar(-3.0)]), b.scalar(0.0), slope])
    return b.op("Mul", [g, slope])


def _mask_b(b, condition):
    return b.op("Cast", [condition], to=1)


def _exp(b, node, x, y, g):
    return b.op("Mul", [g, y])


def _log(b, node, x, y, g):
    return b.op("Div", [g, x])


def _sqrt(b, node, x, y, g):
    return b.op("Div", [b.op("Mul", [g, b.scalar(0.5)]), y])


def _reciprocal(b, node, x, y, g):
    return b.op("Neg", [b.op("Mul", [g, b.op("Mul", [y, y])])])


def _neg(b, node, x, y, g):
    return b.op("Neg", [g])


def _abs(b, node, x, y, g):
    return b.op("Mul", [g, b.op("Sign", [x])])


def _erf(b, node, x, y, g):
    gauss = b.op("Exp", [b.op("Neg", [b.op("Mul", [x, x])])])
    return b.op("Mul", [g, b.op("Mul", [gauss, b.scalar(2 / math.sqrt(math.pi))])])


def _softplus(b, node, x, y, g):
    return b.op("Mul", [g, b.op("Sigmoid", [x])])


def _sin(b, node, x, y, g):
    return b.op("Mul", [g, b.op("Cos", [x])])


def _cos(b, node, x, y, g):
    return b.op("Neg", [b.op("Mul", [g, b.op("Sin", [x])])])


def _gelu(b, node, x, y, g):
    if attribute(node, "approximate", "none") != "none":
        raise ModelError("Gelu with approximate='tanh' is not supported")
    cdf = b.op("Mul", [b.op("Add", [b.op("Erf", [b.op("Mul", [x, b.scalar(1 / math.sqrt(2))])]), b.scalar(1.0)]),
                       b.scalar(0.5)])
    pdf = b.op("Mul", [b.op("Exp", [b.op("Mul", [b.op("Mul", [x, x]), b.scalar(-0.5)])]),
                       b.scalar(1 / math.sqrt(2 * math.pi))])
    return b.op("Mul", [g, b.op("Add", [cdf, b.op("Mul", [x, pdf])])])


def _identity(b, node, x, y, g):
    return g


def _reshape_back(b, node, x, y, g):
    return b.op("Reshape", [g, b.op("Shape", [x])])


def _cast(ctx: Context, node, grads):
    g = grads[0]
    if g is None or not ctx.needs(node.input[0]):
        return [None]
    to = helper.np_dtype_to_tensor_dtype(ctx.probe.dtypes[node.input[0]])
    return [ctx.build.op("Cast", [g], to=int(to))]


def _transpose(ctx: Context, node, grads):
    if grads[0] is None or not ctx.needs(node.input[0]):
        return [None]
    rank = ctx.probe.rank(node.input[0])
    perm = list(attribute(node, "perm", list(range(rank))[::-1]))
    return [ctx.build.op("Transpose", [grads[0]], perm=[int(i) for i in np.argsort(perm)])]


# ---- binary element-wise with broadcasting ----------------------------------------------------

def _binary(ctx: Context, node, grads):
    g = grads[0]
    a, c = node.input[0], node.input[1]
    out = _shapes(ctx, node.output[0])
    b = ctx.build
    op = node.op_type
    if g is None:
        return [None, None]
    if op == "Add":
        ga, gc = g, g
    elif op == "Sub":
        ga, gc = g, (b.op("Neg", [g]) if ctx.needs(c) else None)
    elif op == "Mul":
        ga = b.op("Mul", [g, c]) if ctx.needs(a) else None
        gc = b.op("Mul", [g, a]) if ctx.needs(c) else None
    elif op == "Div":
        ga = b.op("Div", [g, c]) if ctx.needs(a) else None
        gc = b.op("Neg", [b.op("Div", [b.op("Mul", [g, node.output[0]]), c])]) if ctx.needs(c) else None
    elif op == "Pow":
        ga = gc = None
        if ctx.needs(a):
            c_float = c if np.issubdtype(ctx.probe.dtypes.get(c, np.float32), np.floating) else b.op("Cast", [c], to=1)
            lower = b.op("Pow", [a, b.op("Sub", [c_float, b.scalar(1.0)])])
            ga = b.op("Mul", [g, b.op("Mul", [c_float, lower])])
        if ctx.needs(c):
            gc = b.op("Mul", [g, b.op("Mul", [node.output[0], b.op("Log", [a])])])
    elif op in ("Max", "Min"):
        # torch.maximum/minimum: the larger (smaller) input takes the gradient, ties split it.
        wins = b.op("Greater" if op == "Max" else "Less", [a, c])
        half = b.op("Mul", [_mask(ctx, b.op("Equal", [a, c])), b.scalar(0.5)])
        share_a = b.op("Add", [_mask(ctx, wins), half])
        ga = b.op("Mul", [g, share_a])
        gc = b.op("Mul", [g, b.op("Sub", [b.scalar(1.0), share_a])])
    else:
        raise ModelError(f"no rule for {op}")
    return [unbroadcast(ctx, ga, out, a) if ga is not None else None,
            unbroadcast(ctx, gc, out, c) if gc is not None else None]


def _variadic(ctx: Context, node, grads):
    g = grads[0]
    if g is None:
        return [None] * len(node.input)
    out = _shapes(ctx, node.output[0])
    if node.op_type == "Mean":
        g = ctx.build.op("Mul", [g, ctx.build.scalar(1.0 / len(node.input))])
    if node.op_type in ("Max", "Min") and len(node.input) == 2:
        return _binary(ctx, node, grads)
    if node.op_type in ("Max", "Min"):
        if len(node.input) == 1:
            return [g]
        raise ModelError(f"{node.op_type} of more than two inputs is not supported")
    return [unbroadcast(ctx, g, out, name) for name in node.input]


def _where(ctx: Context, node, grads):
    g = grads[0]
    if g is None:
        return [None] * 3
    condition, a, c = node.input
    b = ctx.build
    zero = b.scalar(0.0)
    out = _shapes(ctx, node.output[0])
    ga = unbroadcast(ctx, b.op("Where", [condition, g, zero]), out, a) if ctx.needs(a) else None
    gc = unbroadcast(ctx, b.op("Where", [condition, zero, g]), out, c) if ctx.needs(c) else None
    return [None, ga, gc]


def _prelu(ctx: Context, node, grads):
    g = grads[0]
    if g is None:
        return [None, None]
    x, slope = node.input
    b = ctx.build
    positive = b.op("Greater", [x, b.scalar(0.0)])
    gx = b.op("Where", [positive, g, b.op("Mul", [g, slope])]) if ctx.needs(x) else None
    gs = None
    if ctx.needs(slope):
        gs = unbroadcast(ctx, b.op("Where", [positive, b.scalar(0.0), b.op("Mul", [g, x])]),
                         _shapes(ctx, node.output[0]), slope)
    return [gx, gs]


def _clip(ctx: Context, node, grads):
    g = grads[0]
    if g is None or not ctx.needs(node.input[0]):
        return [None] * len(node.input)
    b, x = ctx.build, node.input[0]
    keep = None
    bounds = list(node.input[1:]) + [None, None]
    for bound, op in ((bounds[0], "GreaterOrEqual"), (bounds[1], "LessOrEqual")):
        if bound:
            if ctx.needs(bound):
                raise ModelError("Clip with computed bounds is not supported")
            inside = b.op(op, [x, bound])
            keep = inside if keep is None else b.op("And", [keep, inside])
    if keep is not None:
        g = b.op("Where", [keep, g, b.scalar(0.0)])
    return _only_first(node, g)


# ---- matrix products ---------------------------------------------------------------------------

def _swap_last(b, name: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return b.op("Transpose", [name], perm=perm)


def _broadcast(*shapes) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(*shapes))


def _matmul(ctx: Context, node, grads):
    g = grads[0]
    if g is None:
        return [None, None]
    a, c = node.input
    b = ctx.build
    ranks = ctx.probe.rank(a), ctx.probe.rank(c)
    if min(ranks) < 2:
        raise ModelError("MatMul of a 1-D operand is not supported")
    ga = gc = None
    if ctx.needs(a):
        product = b.op("MatMul", [g, _swap_last(b, c, ranks[1])])
        shapes = [_broadcast(sa[:-2], sc[:-2]) + sa[-2:] for sa, sc in zip(_shapes(ctx, a), _shapes(ctx, c))]
        ga = unbroadcast(ctx, product, shapes, a)
    if ctx.needs(c):
        product = b.op("MatMul", [_swap_last(b, a, ranks[0]), g])
        shapes = [_broadcast(sa[:-2], sc[:-2]) + sc[-2:] for sa, sc in zip(_shapes(ctx, a), _shapes(ctx, c))]
        gc = unbroadcast(ctx, product, shapes, c)
    return [ga, gc]


def _gemm(ctx: Context, node, grads):
    g = grads[0]
    if g is None:
        return [None] * len(node.input)
    b = ctx.build
    a, c = node.input[0], node.input[1]
    alpha, beta = attribute(node, "alpha", 1.0), attribute(node, "beta", 1.0)
    trans_a, trans_b = attribute(node, "transA", 0), attribute(node, "transB", 0)
    scaled = b.op("Mul", [g, b.scalar(alpha)]) if alpha != 1.0 else g
    result = [None] * len(node.input)
    if ctx.needs(a):  # d op(A) = g op(B)^T
        grad = b.op("MatMul", [scaled, c if trans_b else b.op("Transpose", [c], perm=[1, 0])])
        result[0] = b.op("Transpose", [grad], perm=[1, 0]) if trans_a else grad
    if ctx.needs(c):  # d op(B) = op(A)^T g
        op_a_t = a if trans_a else b.op("Transpose", [a], perm=[1, 0])
        grad = b.op("MatMul", [op_a_t, scaled])
        result[1] = b.op("Transpose", [grad], perm=[1, 0]) if trans_b else grad
    if len(node.input) > 2 and ctx.needs(node.input[2]):
        gc = b.op("Mul", [g, b.scalar(beta)]) if beta != 1.0 else g
        result[2] = unbroadcast(ctx, gc, _shapes(ctx, node.output[0]), node.input[2])
    return result


# ---- shape ops ----------------------------------------------------------------------------------

def _concat(ctx: Context, node, grads):
    g = grads[0]
    if g is None:
        return [None] * len(node.input)
    rank = ctx.probe.rank(node.output[0])
    axis = _axis(attribute(node, "axis"), rank)
    sizes = [_static(ctx, name, axis, "Concat") for name in node.input]
    parts = ctx.build.op("Split", [g, ctx.build.ints(sizes)], outputs=len(sizes), axis=axis)
    parts = [parts] if isinstance(parts, str) else parts
    return [part if ctx.needs(name) else None for part, name in zip(parts, node.input)]


def _split(ctx: Context, node, grads):
    if not ctx.needs(node.input[0]):
        return [None] * len(node.input)
    rank = ctx.probe.rank(node.input[0])
    axis = _axis(attribute(node, "axis", 0), rank)
    parts = [g if g is not None else _zeros_like(ctx, name) for g, name in zip(grads, node.output)]
    return _only_first(node, ctx.build.op("Concat", parts, axis=axis))


def _slice(ctx: Context, node, grads):
    g = grads[0]
    data = node.input[0]
    if g is None or not ctx.needs(data):
        return [None] * len(node.input)
    shape, rank = ctx.probe.shape(data), ctx.probe.rank(data)
    starts = _value(ctx, node.input[1], "Slice starts")
    ends = _value(ctx, node.input[2], "Slice ends")
    axes = _value(ctx, node.input[3], "Slice axes") if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
    steps = _value(ctx, node.input[4], "Slice steps") if len(node.input) > 4 and node.input[4] else np.ones(len(starts))
    pads = [0] * (2 * rank)
    out_shape = ctx.probe.shape(node.output[0])
    if any(int(step) != 1 for step in steps):
        return _only_first(node, _strided_slice_grad(ctx, g, shape, out_shape, starts, ends, axes, steps))
    for start, step, axis in zip(starts, steps, axes):
        axis = _axis(int(axis), rank)
        size = _static(ctx, data, axis, "Slice")
        start = int(start) + size if start < 0 else int(start)
        start = min(max(start, 0), size)
        pads[axis], pads[rank + axis] = start, size - start - out_shape[axis]
    return _only_first(node, ctx.build.op("Pad", [g, ctx.build.ints(pads)]))


def _strided_slice_grad(ctx: Context, g: str, shape, out_shape, starts, ends, axes, steps) -> str:
    """The gradient of a Slice with any steps (a flip is step -1): along each sliced axis, the
    output's gradient goes back to the input positions the slice read, by a one-hot product."""
    b, rank = ctx.build, len(shape)
    current = list(out_shape)
    for start, end, step, axis in zip(starts, ends, steps, axes):
        axis = _axis(int(axis), rank)
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
    pads = [int(p) for p in _value(ctx, node.input[1], "Pad pads")]
    if len(node.input) > 3 and node.input[3]:
        axes = [_axis(int(a), rank) for a in _value(ctx, node.input[3], "Pad axes")]
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
                size = _static(ctx, data, axis, "Pad")
                matrices[axis] = _axis_matrix(helper.make_node("Pad", [], [], mode=mode),
                                              [("pads", np.asarray(one, np.int64))], axis, rank, size)
        return _only_first(node, _apply_axis_matrices(ctx, g, matrices, rank))
    starts, ends, sliced = [], [], []
    for index, axis in enumerate(axes):
        before, after = pads[index], pads[count + index]
        if before or after:
            starts.append(before)
            ends.append(before + _static(ctx, data, axis, "Pad"))
            sliced.append(axis)
    b = ctx.build
    if not sliced:
        return _only_first(node, g)
    return _only_first(node, b.op("Slice", [g, b.ints(starts), b.ints(ends), b.ints(sliced)]))


def _expand(ctx: Context, node, grads):
    g = grads[0]
    if g is None:
        return [None, None]
    return [unbroadcast(ctx, g, _shapes(ctx, node.output[0]), node.input[0]), None]


def _gather(ctx: Context, node, grads):
    g = grads[0]
    data = node.input[0]
    if g is None or not ctx.needs(data):
        return [None, None]
    rank = ctx.probe.rank(data)
    axis = _axis(attribute(node, "axis", 0), rank)
    size = _static(ctx, data, axis, "Gather")
    indices = _value(ctx, node.input[1], "Gather indices").reshape(-1).astype(np.int64)
    indices = np.where(indices < 0, indices + size, indices)
    onehot = np.zeros((len(indices), size), np.float32)
    onehot[np.arange(len(indices)), indices] = 1.0
    trailing = [_static(ctx, data, d, "Gather") for d in range(axis + 1, rank)]
    b = ctx.build
    folded = b.op("Reshape", [g, b.ints([-1, len(indices), int(np.prod(trailing, dtype=np.int64))])])
    spread = b.op("Einsum", [folded, b.const(onehot)], equation="aip,il->alp")
    return [b.op("Reshape", [spread, b.op("Shape", [data])]), None]


# ---- reductions and normalizations -------------------------------------------------------------

def _reduce_axes(ctx: Context, node, rank: int) -> list[int]:
    axes = attribute(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = _value(ctx, node.input[1], f"{node.op_type} axes")
    if axes is None or len(axes) == 0:
        if attribute(node, "noop_with_empty_axes", 0):
            return []
        return list(range(rank))
    return sorted(_axis(int(a), rank) for a in np.reshape(axes, -1))


def _reduce(ctx: Context, node, grads):
    g = grads[0]
    x = node.input[0]
    if g is None or not ctx.needs(x):
        return [None] * len(node.input)
    b = ctx.build
    rank = ctx.probe.rank(x)
    axes = _reduce_axes(ctx, node, rank)
    if not axes:
        return _only_first(node, g)
    kept = g if attribute(node, "keepdims", 1) else b.op("Unsqueeze", [g, b.ints(axes)])
    y = node.output[0] if attribute(node, "keepdims", 1) else b.op("Unsqueeze", [node.output[0], b.ints(axes)])
    spread = b.op("Expand", [kept, b.op("Shape", [x])])
    if node.op_type == "ReduceSum":
        grad = spread
    elif node.op_type == "ReduceMean":
        count = int(np.prod([_static(ctx, x, a, "ReduceMean") for a in axes]))
        grad = b.op("Mul", [spread, b.scalar(1.0 / count)])
    elif node.op_type == "ReduceSumSquare":
        grad = b.op("Mul", [spread, b.op("Mul", [x, b.scalar(2.0)])])
    elif node.op_type == "ReduceL2":
        grad = b.op("Mul", [spread, b.op("Div", [x, y])])
    else:  # ReduceMax / ReduceMin: the extreme entries share the gradient, as torch's amax does
        hits = _mask(ctx, b.op("Equal", [x, y]))
        count = b.op("ReduceSum", [hits, b.ints(axes)], keepdims=1)
        grad = b.op("Mul", [spread, b.op("Div", [hits, count])])
    return _only_first(node, grad)


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
    return _only_first(node, b.op("Mul", [g, _channel_vector(b, factor, ctx.probe.rank(x))]))


def _normalized_grad(ctx: Context, x: str, gh: str, axes: list[int], epsilon: float) -> str:
    """d/dx of (x - mean) / sqrt(var + eps) over ``axes``, applied to ``gh``."""
    b = ctx.build
    count = int(np.prod([_static(ctx, x, a, "normalization") for a in axes]))
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
    axes = list(range(_axis(attribute(node, "axis", -1), rank), rank))
    gh = ctx.build.op("Mul", [g, node.input[1]])
    return _only_first(node, _normalized_grad(ctx, x, gh, axes, attribute(node, "epsilon", 1e-5)))


def _instance_norm(ctx: Context, node, grads):
    g = grads[0]
    x = node.input[0]
    if g is None or not ctx.needs(x):
        return [None] * len(node.input)
    rank = ctx.probe.rank(x)
    gh = ctx.build.op("Mul", [g, _channel_vector(ctx.build, node.input[1], rank)])
    return _only_first(node, _normalized_grad(ctx, x, gh, list(range(2, rank)), attribute(node, "epsilon", 1e-5)))


# ---- convolution and pooling ---------------------------------------------------------------------

def _explicit_pads(node, in_sizes, out_sizes, kernel, strides, dilations) -> list[int]:
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


def _conv(ctx: Context, node, grads):
    g = grads[0]
    x, w = node.input[0], node.input[1]
    if g is None or not ctx.needs(x):
        return [None] * len(node.input)
    if ctx.needs(w):
        raise ModelError("Conv with computed weights is not supported")
    in_sizes = ctx.probe.shape(x)[2:]
    out_sizes = ctx.probe.shape(node.output[0])[2:]
    kernel = ctx.probe.shape(w)[2:]
    n = len(kernel)
    strides = list(attribute(node, "strides", [1] * n))
    dilations = list(attribute(node, "dilations", [1] * n))
    pads = _explicit_pads(node, in_sizes, out_sizes, kernel, strides, dilations)
    extra = [in_sizes[i] - ((out_sizes[i] - 1) * strides[i] - pads[i] - pads[n + i] + (kernel[i] - 1) * dilations[i] + 1)
             for i in range(n)]
    grad = ctx.build.op("ConvTranspose", [g, w], strides=strides, dilations=dilations, pads=pads,
                        group=attribute(node, "group", 1), output_padding=extra, kernel_shape=list(kernel))
    return _only_first(node, grad)


def _conv_transpose(ctx: Context, node, grads):
    g = grads[0]
    x, w = node.input[0], node.input[1]
    if g is None or not ctx.needs(x):
        return [None] * len(node.input)
    if ctx.needs(w) or attribute(node, "output_shape") or attribute(node, "auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise ModelError("ConvTranspose with computed weights, output_shape or auto_pad is not supported")
    kernel = ctx.probe.shape(w)[2:]
    n = len(kernel)
    grad = ctx.build.op("Conv", [g, w], strides=list(attribute(node, "strides", [1] * n)),
                        dilations=list(attribute(node, "dilations", [1] * n)),
                        pads=list(attribute(node, "pads", [0] * (2 * n))), group=attribute(node, "group", 1),
                        kernel_shape=list(kernel))
    return _only_first(node, grad)


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
    hits = _mask(ctx, b.op("Equal", [x, node.output[0]]))
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


def _axis_matrix(node, inputs: list[tuple[str, np.ndarray | None]], axis: int, rank: int, size: int) -> np.ndarray:
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


def _apply_axis_matrices(ctx: Context, g: str, matrices: dict[int, np.ndarray], rank: int) -> str:
    b = ctx.build
    for axis, matrix in matrices.items():
        if axis == rank - 1:
            g = b.op("MatMul", [g, b.const(matrix.T)])
        elif axis == rank - 2:
            g = b.op("MatMul", [b.const(matrix), g])
        else:
            raise ModelError("linear maps over more than two spatial axes are not supported")
    return g


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
    pads = _explicit_pads(node, in_sizes, out_sizes, kernel, strides, dilations)
    matrices = {}
    for i in range(n):
        dilated = {"dilations": [dilations[j] if j == i else 1 for j in range(n)]} if dilations[i] != 1 else {}
        one = helper.make_node("AveragePool", [], [], kernel_shape=[kernel[j] if j == i else 1 for j in range(n)],
                               strides=[strides[j] if j == i else 1 for j in range(n)], **dilated,
                               pads=[pads[j] if j == i else 0 for j in range(n)] + [pads[n + j] if j == i else 0 for j in range(n)],
                               ceil_mode=attribute(node, "ceil_mode", 0),
                               count_include_pad=attribute(node, "count_include_pad", 0))
        matrices[2 + i] = _axis_matrix(one, [], 2 + i, rank, in_sizes[i])
    return [_apply_axis_matrices(ctx, g, matrices, rank)]


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
    roi = _value(ctx, inputs[1], "Resize roi").astype(np.float32) if inputs[1] else None
    scales = _value(ctx, inputs[2], "Resize scales") if inputs[2] else None
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
        matrices[axis] = _axis_matrix(node, feeds, axis, rank, in_shape[axis])
    return _only_first(node, _apply_axis_matrices(ctx, g, matrices, rank))


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


# Ops whose outputs are integers, booleans or constants: they never carry a gradient.
NO_GRADIENT = {"Shape", "Size", "Constant", "ConstantOfShape", "Range", "Equal", "Greater", "GreaterOrEqual", "Less",
               "LessOrEqual", "Not", "And", "Or", "Xor", "NonZero", "ArgMax", "ArgMin", "EyeLike", "IsNaN", "IsInf"}


def _flat(ctx: Context, node, grads):
    """Piecewise-constant ops: zero gradient almost everywhere."""
    return [None] * len(node.input)


RULES = {
    "Identity": _unary(_identity), "Dropout": _unary(_identity),
    "Relu": _unary(_relu), "LeakyRelu": _unary(_leaky_relu), "Elu": _unary(_elu),
    "Sigmoid": _unary(_sigmoid), "Tanh": _unary(_tanh), "HardSigmoid": _unary(_hard_sigmoid),
    "HardSwish": _unary(_hard_swish), "Exp": _unary(_exp), "Log": _unary(_log), "Sqrt": _unary(_sqrt),
    "Reciprocal": _unary(_reciprocal), "Neg": _unary(_neg), "Abs": _unary(_abs), "Erf": _unary(_erf),
    "Softplus": _unary(_softplus), "Sin": _unary(_sin), "Cos": _unary(_cos), "Gelu": _unary(_gelu),
    "Reshape": _unary(_reshape_back), "Flatten": _unary(_reshape_back), "Squeeze": _unary(_reshape_back),
    "Unsqueeze": _unary(_reshape_back),
    "Cast": _cast, "Transpose": _transpose,
    "Add": _binary, "Sub": _binary, "Mul": _binary, "Div": _binary, "Pow": _binary,
    "Max": _variadic, "Min": _variadic, "Sum": _variadic, "Mean": _variadic,
    "Where": _where, "PRelu": _prelu, "Clip": _clip,
    "MatMul": _matmul, "Gemm": _gemm,
    "Concat": _concat, "Split": _split, "Slice": _slice, "Pad": _pad, "Expand": _expand, "Gather": _gather,
    "ReduceSum": _reduce, "ReduceMean": _reduce, "ReduceSumSquare": _reduce, "ReduceL2": _reduce,
    "ReduceMax": _reduce, "ReduceMin": _reduce,
    "Softmax": _softmax, "LogSoftmax": _softmax,
    "BatchNormalization": _batch_norm, "LayerNormalization": _layer_norm, "InstanceNormalization": _instance_norm,
    "Conv": _conv, "ConvTranspose": _conv_transpose,
    "GlobalAveragePool": _global_pool, "GlobalMaxPool": _global_pool,
    "MaxPool": _max_pool, "AveragePool": _average_pool, "Resize": _resize, "LRN": _lrn,
    "Sign": _flat, "Floor": _flat, "Ceil": _flat, "Round": _flat,
}
