"""Rules for element-wise ops: unary functions, casts and transposes, broadcasting binary and variadic ops."""
from __future__ import annotations

import math

import numpy as np
from onnx import helper

from igcli.backends.onnx.vjp.common import attribute, float_mask, only_first, probe_shapes, unbroadcast
from igcli.backends.onnx.vjp.context import Context
from igcli.errors import ModelError


def _unary(formula):
    def rule(ctx: Context, node, grads):
        g = grads[0]
        if g is None or not ctx.needs(node.input[0]):
            return [None] * len(node.input)
        return only_first(node, formula(ctx.build, node, node.input[0], node.output[0], g))
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


def _binary(ctx: Context, node, grads):
    g = grads[0]
    a, c = node.input[0], node.input[1]
    out = probe_shapes(ctx, node.output[0])
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
        half = b.op("Mul", [float_mask(ctx, b.op("Equal", [a, c])), b.scalar(0.5)])
        share_a = b.op("Add", [float_mask(ctx, wins), half])
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
    out = probe_shapes(ctx, node.output[0])
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
    out = probe_shapes(ctx, node.output[0])
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
                         probe_shapes(ctx, node.output[0]), slope)
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
    return only_first(node, g)


def _flat(ctx: Context, node, grads):
    """Piecewise-constant ops: zero gradient almost everywhere."""
    return [None] * len(node.input)


RULES = {"Identity": _unary(_identity), "Dropout": _unary(_identity), "Relu": _unary(_relu),
    "LeakyRelu": _unary(_leaky_relu), "Elu": _unary(_elu), "Sigmoid": _unary(_sigmoid), "Tanh": _unary(_tanh),
    "HardSigmoid": _unary(_hard_sigmoid), "HardSwish": _unary(_hard_swish), "Exp": _unary(_exp),
    "Log": _unary(_log), "Sqrt": _unary(_sqrt), "Reciprocal": _unary(_reciprocal), "Neg": _unary(_neg),
    "Abs": _unary(_abs), "Erf": _unary(_erf), "Softplus": _unary(_softplus), "Sin": _unary(_sin),
    "Cos": _unary(_cos), "Gelu": _unary(_gelu), "Reshape": _unary(_reshape_back), "Flatten": _unary(_reshape_back),
    "Squeeze": _unary(_reshape_back), "Unsqueeze": _unary(_reshape_back), "Cast": _cast, "Transpose": _transpose,
    "Add": _binary, "Sub": _binary, "Mul": _binary, "Div": _binary, "Pow": _binary, "Max": _variadic,
    "Min": _variadic, "Sum": _variadic, "Mean": _variadic, "Where": _where, "PRelu": _prelu, "Clip": _clip,
    "Sign": _flat, "Floor": _flat, "Ceil": _flat, "Round": _flat}
