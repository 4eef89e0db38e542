"""Plain (forward-only) ONNX models converted to torch for differentiation.

Conversion uses onnx2fx (ONNX -> torch.fx, no torchvision), which reads weights from initializers
and from Constant nodes alike, at any opset it knows.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from igcli.backends.onnx.format import INTEGER_TYPES, TensorSpec, graph_inputs, graph_outputs, require
from igcli.backends.outputs import first_output
from igcli.errors import ModelError, root_cause

log = logging.getLogger(__name__)


def check_differentiable_input(model, path: Path) -> TensorSpec:
    """The one floating-point input IG can run on; token-id models are pointed to text support."""
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(spec.name for spec in inputs)
        raise ModelError(f"{path}: the model has {len(inputs)} inputs ({names}); igcli explains one-input models")
    (spec,) = inputs
    if spec.dtype in INTEGER_TYPES.values():
        raise ModelError(f"{path}: input '{spec.name}' is {spec.dtype} (token ids?); ids are not differentiable, "
                         "so attribute at the embedding layer with igcli's text support instead")
    warn_fixed_batch(spec, path)
    return spec


def unsupported_ops(model) -> list[tuple[str, list[str]]]:
    """(op type, node names) for every op onnx2fx cannot convert."""
    onnx2fx = require("onnx2fx")

    missing = {(op, domain) for op, domain, *_ in onnx2fx.analyze_model(model).unsupported_ops}
    by_op: dict[str, list[str]] = {}
    for index, node in enumerate(model.graph.node):
        if (node.op_type, node.domain) in missing:
            by_op.setdefault(node.op_type, []).append(node.name or f"#{index}")
    return sorted(by_op.items())


def onnx_to_torch(model, path: Path) -> nn.Module:
    """A torch module computing the same function as the ONNX graph."""
    onnx2fx = require("onnx2fx")

    missing = unsupported_ops(model)
    if missing:
        listed = "; ".join(f"{op} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" for op, names in missing)
        raise ModelError(f"{path}: igcli cannot differentiate these ops: {listed}; run `igcli inspect {path}` for more")
    try:
        module = onnx2fx.convert(model, base_dir=str(path.parent))
    except Exception as error:  # noqa: BLE001 - converter errors come in many kinds
        raise ModelError(f"{path}: cannot convert the ONNX graph to torch ({root_cause(error)}); "
                         f"run `igcli inspect {path}` for more") from None
    inputs, outputs = graph_inputs(model), graph_outputs(model)
    if len(inputs) != 1:
        return module
    batch = inputs[0].shape[0] if inputs[0].shape else None
    batch = batch if isinstance(batch, int) and batch > 0 else None
    trailing = outputs[0].shape[2:] if outputs else ()
    squeeze = bool(trailing) and all(d == 1 for d in trailing)  # [N, classes, 1, 1] heads of conv nets
    return OnnxModule(module, batch, squeeze) if batch or squeeze else module


class OnnxModule(nn.Module):
    """A converted graph fixed to batches of ``size`` run on any batch (slice by slice, the last
    one zero-padded), and class scores [N, C, 1, 1] given as [N, C] when ``squeeze``."""

    def __init__(self, module: nn.Module, size: int | None, squeeze: bool):
        super().__init__()
        self.module, self.size, self.squeeze = module, size, squeeze

    def forward(self, x: torch.Tensor):
        result = self._run(x)
        return result.flatten(1) if self.squeeze else result

    def _run(self, x: torch.Tensor):
        if self.size is None:
            result = self.module(x)
            return first_output(result)
        outputs = []
        for start in range(0, len(x), self.size):
            part = x[start:start + self.size]
            missing = self.size - len(part)
            if missing:
                part = torch.cat([part, part.new_zeros((missing,) + part.shape[1:])])
            result = first_output(self.module(part))
            outputs.append(result[: self.size - missing])
        return torch.cat(outputs)


def warn_fixed_batch(spec: TensorSpec, path: Path) -> None:
    """The one warning for a graph fixed to one batch size: igcli runs it at that size."""
    batch = spec.shape[0] if spec.shape else None
    if isinstance(batch, int) and batch > 0:
        log.warning("%s: input '%s' is fixed to batch %d; igcli runs %d input(s) at a time (batch_size has no "
                    "effect on the model)", path, spec.name, batch, batch)
