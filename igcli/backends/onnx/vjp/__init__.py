"""Vector-Jacobian products of ONNX ops, written as ONNX nodes (opset 17 semantics).

Each rule takes (context, forward node, gradients of its outputs, None where none flows) and
returns the gradient of each input (None where none is needed). Only inputs that depend on the
model's input get one: weights, shapes and indices are constants of the backward graph. The rules
live by op family (elementwise, linear, shape, reduce, pooling); RULES maps op types to them.
"""
from __future__ import annotations

from igcli.backends.onnx.vjp import elementwise, linear, pooling, reduce, shape

RULES = {**elementwise.RULES, **linear.RULES, **shape.RULES, **reduce.RULES, **pooling.RULES}

# Ops whose outputs are integers, booleans or constants: they never carry a gradient.
NO_GRADIENT = {"Shape", "Size", "Constant", "ConstantOfShape", "Range", "Equal", "Greater", "GreaterOrEqual", "Less",
               "LessOrEqual", "Not", "And", "Or", "Xor", "NonZero", "ArgMax", "ArgMin", "EyeLike", "IsNaN", "IsInf"}


def unsupported(model, active: set[str]) -> list[tuple[str, str]]:
    """(op, node name) of each node on the gradient's path that has no rule."""
    found = []
    for index, node in enumerate(model.graph.node):
        on_path = any(name in active for name in node.input) and any(name in active for name in node.output)
        if on_path and node.op_type not in RULES:
            found.append((node.op_type if not node.domain or node.domain == "ai.onnx" else f"{node.domain}.{node.op_type}",
                          node.name or f"#{index}"))
    return found
