"""What a vector-Jacobian rule works with: the node builder, the forward graph's probe, the active tensors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Probe:
    """Shapes (per probe batch) and small integer values of every tensor of the forward graph."""

    shapes: list[dict[str, tuple[int, ...]]]
    dtypes: dict[str, np.dtype]
    values: dict[str, np.ndarray] = field(default_factory=dict)  # integer tensors, first probe

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[-1][name]

    def rank(self, name: str) -> int:
        return len(self.shapes[-1][name])

    def batch_dependent(self, name: str) -> tuple[bool, ...]:
        """Per axis: does its size change with the batch size?"""
        first, last = self.shapes[0][name], self.shapes[-1][name]
        return tuple(a != b for a, b in zip(first, last))


class Builder:
    """Emits the backward nodes with names that cannot clash with the forward graph's."""

    def __init__(self, taken: set[str], dtype_code: int):
        self.nodes: list[Any] = []  # NodeProto
        self.initializers: list[Any] = []  # TensorProto
        self.taken, self.count = taken, 0
        self.dtype_code = dtype_code  # ONNX element type of the gradients (float32)

    def fresh(self, hint: str) -> str:
        while True:
            self.count += 1
            name = f"igcli_grad/{hint}_{self.count}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attributes):
        from onnx import helper

        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.fresh(f"node_{op_type}"), **attributes))
        return names[0] if outputs == 1 else names

    def const(self, array, dtype=None) -> str:
        from onnx import numpy_helper

        array = np.asarray(array, dtype=dtype or np.float32)
        name = self.fresh("const")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1), np.int64)

    def scalar(self, value: float) -> str:
        return self.const(np.asarray(value, dtype=np.float32))


@dataclass
class Context:
    """What a rule sees: the builder, the probe, and which tensors carry gradients."""

    build: Builder
    probe: Probe
    active: set[str]
    initial: dict[str, np.ndarray]  # constant tensors by name (initializers and Constant nodes)

    def needs(self, name: str) -> bool:
        return bool(name) and name in self.active

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.initial:
            return self.initial[name]
        return self.probe.values.get(name)
