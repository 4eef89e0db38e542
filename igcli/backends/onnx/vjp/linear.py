"""Rules for matrix products and convolutions."""
from __future__ import annotations

import numpy as np

from igcli.backends.onnx.vjp.common import attribute, explicit_pads, only_first, probe_shapes, unbroadcast
from igcli.backends.onnx.vjp.context import Context
from igcli.errors import ModelError


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
        shapes = [_broadcast(sa[:-2], sc[:-2]) + sa[-2:] for sa, sc in zip(probe_shapes(ctx, a), probe_shapes(ctx, c))]
        ga = unbroadcast(ctx, product, shapes, a)
    if ctx.needs(c):
        product = b.op("MatMul", [_swap_last(b, a, ranks[0]), g])
        shapes = [_broadcast(sa[:-2], sc[:-2]) + sc[-2:] for sa, sc in zip(probe_shapes(ctx, a), probe_shapes(ctx, c))]
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
    result: list[str | None] = [None] * len(node.input)
    if ctx.needs(a):  # d op(A) = g op(B)^T
        grad = b.op("MatMul", [scaled, c if trans_b else b.op("Transpose", [c], perm=[1, 0])])
        result[0] = b.op("Transpose", [grad], perm=[1, 0]) if trans_a else grad
    if ctx.needs(c):  # d op(B) = op(A)^T g
        op_a_t = a if trans_a else b.op("Transpose", [a], perm=[1, 0])
        grad = b.op("MatMul", [op_a_t, scaled])
        result[1] = b.op("Transpose", [grad], perm=[1, 0]) if trans_b else grad
    if len(node.input) > 2 and ctx.needs(node.input[2]):
        gc = b.op("Mul", [g, b.scalar(beta)]) if beta != 1.0 else g
        result[2] = unbroadcast(ctx, gc, probe_shapes(ctx, node.output[0]), node.input[2])
    return result


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
    pads = explicit_pads(node, in_sizes, out_sizes, kernel, strides, dilations)
    extra = [in_sizes[i] - ((out_sizes[i] - 1) * strides[i] - pads[i] - pads[n + i] + (kernel[i] - 1) * dilations[i] + 1)
             for i in range(n)]
    grad = ctx.build.op("ConvTranspose", [g, w], strides=strides, dilations=dilations, pads=pads,
                        group=attribute(node, "group", 1), output_padding=extra, kernel_shape=list(kernel))
    return only_first(node, grad)


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
    return only_first(node, grad)


RULES = {"MatMul": _matmul, "Gemm": _gemm, "Conv": _conv, "ConvTranspose": _conv_transpose}
