"""ONNX files as igcli reads them: tensors and types, the model proto, optional imports, and the
metadata that marks an igcli gradient graph. The bottom of backends/onnx/: it imports no other part."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from igcli import __version__
from igcli.backends.base import ScoreKind
from igcli.errors import ModelError, first_line

# The gradient graph's inputs and outputs: (input, target_weights) -> (scores, input_grads).
INPUT, WEIGHTS, SCORES, GRADS = "input", "target_weights", "scores", "input_grads"
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


def require(module: str):
    """Import an optional dependency of differentiating ONNX models, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(f"differentiating ONNX models (or building gradient graphs) needs {module}: "
                         "pip install 'igcli[onnx]'") from None


@dataclass(frozen=True)
class GradientGraphInfo:
    """What igcli wrote into a gradient graph's metadata."""

    score: ScoreKind
    source_sha256: str
    version: str
    input_shape: tuple[int, ...]  # without the batch axis
    fixed_batch: int | None  # None: any batch size


def read_info(model) -> GradientGraphInfo | None:
    """The igcli metadata of an ONNX ModelProto, or None when it is not an igcli gradient graph."""
    meta = {prop.key: prop.value for prop in model.metadata_props}
    if meta.get("igcli.kind") != "gradient-graph":
        return None
    shape = tuple(int(d) for d in meta["igcli.input_shape"].split(",") if d)
    batch = meta.get("igcli.fixed_batch") or None
    return GradientGraphInfo(ScoreKind(meta["igcli.score"]), meta.get("igcli.source_sha256", ""),
                             meta.get("igcli.version", ""), shape, int(batch) if batch else None)


def with_metadata(model, score: ScoreKind, source_sha256: str, input_shape: tuple[int, ...], fixed_batch: int | None):
    """``model`` marked as an igcli gradient graph (read back by read_info)."""
    import onnx

    metadata = {"igcli.kind": "gradient-graph", "igcli.version": __version__, "igcli.score": ScoreKind(score).value,
                "igcli.source_sha256": source_sha256, "igcli.input_shape": ",".join(map(str, input_shape)),
                "igcli.fixed_batch": str(fixed_batch or "")}
    onnx.helper.set_model_props(model, metadata)
    return model
