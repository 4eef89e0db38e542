"""Plain (forward-only) ONNX models: read, describe, and convert to torch for differentiation.

Conversion uses onnx2fx (ONNX -> torch.fx, no torchvision), which reads weights from initializers
and from Constant nodes alike, at any opset it knows.
"""
from __future__ import annotations

import importlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from igcli.digests import file_sha256  # noqa: F401 - named here too (backends.loading)
from igcli.errors import ModelError, first_line, root_cause

log = logging.getLogger(__name__)

FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}
INTEGER_TYPES = {2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 12: "uint32", 13: "uint64"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str | None, ...]  # ints fixed, strings named symbols, None unknown


def read_onnx(path: Path):
    """The ModelProto at ``path``; unreadable files become one ModelError line."""
    import onnx

    try:
        return onnx.load(str(path))
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found; check model.path or --model") from None
    except Exception as error:  # noqa: BLE001 - protobuf raises its own kinds
        raise ModelError(f"{path}: not an ONNX model igcli can read ({first_line(error)})") from None




def graph_inputs(model) -> list[TensorSpec]:
    """The graph's real inputs (initializers listed as inputs by old exporters left out)."""
    initializers = {init.name for init in model.graph.initializer}
    return [_spec(value) for value in model.graph.input if value.name not in initializers]


def graph_outputs(model) -> list[TensorSpec]:
    return [_spec(value) for value in model.graph.output]


def _spec(value) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)
    kind = tensor_type.elem_type
    return TensorSpec(value.name, FLOAT_TYPES.get(kind) or INTEGER_TYPES.get(kind) or f"type {kind}", dims)


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


def require(module: str):
    """Import an optional dependency of differentiating ONNX models, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(f"differentiating ONNX models (or building gradient graphs) needs {module}: "
                         "pip install 'igcli[onnx]'") from None


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
            return result[0] if isinstance(result, (tuple, list)) else result
        outputs = []
        for start in range(0, len(x), self.size):
            part = x[start:start + self.size]
            missing = self.size - len(part)
            if missing:
                part = torch.cat([part, part.new_zeros((missing,) + part.shape[1:])])
            result = self.module(part)
            result = result[0] if isinstance(result, (tuple, list)) else result
            outputs.append(result[: self.size - missing])
        return torch.cat(outputs)


def warn_fixed_batch(spec: TensorSpec, path: Path) -> None:
    """The one warning for a graph fixed to one batch size: igcli runs it at that size."""
    batch = spec.shape[0] if spec.shape else None
    if isinstance(batch, int) and batch > 0:
        log.warning("%s: input '%s' is fixed to batch %d; igcli runs %d input(s) at a time (batch_size has no "
                    "effect on the model)", path, spec.name, batch, batch)


def describe(model, path: Path) -> dict[str, Any]:
    """What `igcli inspect` prints: inputs, outputs, opsets, producer, ops, gradient support."""
    from igcli.backends.onnx.export import read_info

    info = read_info(model)
    ops = Counter(node.op_type for node in model.graph.node)
    report: dict[str, Any] = {
        "file": str(path),
        "producer": f"{model.producer_name} {model.producer_version}".strip() or None,
        "ir_version": model.ir_version,
        "opsets": {entry.domain or "ai.onnx": entry.version for entry in model.opset_import},
        "inputs": [spec.__dict__ for spec in graph_inputs(model)],
        "outputs": [spec.__dict__ for spec in graph_outputs(model)],
        "ops": dict(sorted(ops.items())),
        "igcli_gradient_graph": info is not None,
    }
    from igcli.backends.onnx.text import embedding_tensors

    if tables := embedding_tensors(model):  # where a text model can be attributed (model.embedding_layer)
        report["embedding_tensors"] = {name: {"vocabulary": vocab, "width": width}
                                       for name, (vocab, width) in tables.items()}
    if info is not None:
        report["gradient_graph"] = {"score": info.score.value, "source_sha256": info.source_sha256,
                                    "igcli_version": info.version, "input_shape": list(info.input_shape)}
    else:
        from igcli.backends.onnx.vjp import NO_GRADIENT, RULES

        report["unsupported_ops"] = {op: names for op, names in unsupported_ops(model)}  # by the torch route
        report["ops_without_gradient_rule"] = sorted(op for op in ops if op not in RULES and op not in NO_GRADIENT)
    return report
