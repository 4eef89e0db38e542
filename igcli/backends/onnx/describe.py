"""What `igcli inspect` says of an ONNX file: its interface, ops and what igcli can differentiate."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from igcli.backends.onnx.format import graph_inputs, graph_outputs, read_info
from igcli.backends.onnx.source import unsupported_ops
from igcli.backends.onnx.text import embedding_tensors
from igcli.backends.onnx.vjp import NO_GRADIENT, RULES


def describe(model, path: Path) -> dict[str, Any]:
    """What `igcli inspect` prints: inputs, outputs, opsets, producer, ops, gradient support."""
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
    if tables := embedding_tensors(model):  # where a text model can be attributed (model.embedding_layer)
        report["embedding_tensors"] = {name: {"vocabulary": vocab, "width": width}
                                       for name, (vocab, width) in tables.items()}
    if info is not None:
        report["gradient_graph"] = {"score": info.score.value, "source_sha256": info.source_sha256,
                                    "igcli_version": info.version, "input_shape": list(info.input_shape)}
    else:
        report["unsupported_ops"] = {op: names for op, names in unsupported_ops(model)}  # by the torch route
        report["ops_without_gradient_rule"] = sorted(op for op in ops if op not in RULES and op not in NO_GRADIENT)
    return report
