"""Reverse-mode differentiation of a plain ONNX graph, ONNX ops in, ONNX ops out.

The result is one ONNX model: inputs (input, target_weights), outputs (scores, input_grads). It
holds the forward nodes unchanged (at opset 17 or the model's own, if newer), the score head, and
for each forward node that carries a gradient its vector-Jacobian product as ONNX nodes
(backends/onnx/vjp/). Shapes the rules need (which axes broadcast, the sizes a Concat joined) come from
one probing run of the forward graph on onnxruntime at two batch sizes, so graphs that compute
their shapes at run time (Shape -> Gather -> Reshape) differentiate like any other.
"""
from __future__ import annotations

import logging

import numpy as np

from igcli.backends.base import ScoreKind
from igcli.backends.onnx.format import GRADS, INPUT, SCORES, WEIGHTS
from igcli.backends.onnx.vjp import RULES, unsupported
from igcli.backends.onnx.vjp.context import Builder, Context, Probe
from igcli.errors import ModelError, first_line, root_cause

log = logging.getLogger(__name__)

TARGET_OPSET = 17
PROBE_BATCHES = (2, 3)


def normalize(model):
    """A copy at opset >= TARGET_OPSET, initializers out of the input list, one float input."""
    import onnx
    from onnx import version_converter

    model = onnx.ModelProto.FromString(model.SerializeToString())
    _rename(model, {name: f"{name}__source" for name in (INPUT, WEIGHTS, SCORES, GRADS)})
    opset = opset_of(model)
    if opset < TARGET_OPSET:
        if model.ir_version < 4:  # IR 3 lists every initializer as a graph input; the converter expects that
            listed = {value.name for value in model.graph.input}
            model.graph.input.extend(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims)
                                     for init in model.graph.initializer if init.name not in listed)
        try:
            model = version_converter.convert_version(model, TARGET_OPSET)
        except Exception as error:  # noqa: BLE001 - the converter raises its own kinds
            for index, node in enumerate(model.graph.node):
                if not onnx.defs.has(node.op_type, node.domain):
                    raise ModelError(f"igcli cannot differentiate op {node.op_type} (node '{node.name or index}'): "
                                     f"not an operator of ONNX opset {opset}") from None
            raise ModelError(f"cannot bring the ONNX graph from opset {opset} to {TARGET_OPSET} "
                             f"({root_cause(error)})") from None
    initializers = {init.name for init in model.graph.initializer}
    kept = [value for value in model.graph.input if value.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = max(model.ir_version, 8)
    return model


def _rename(model, renames: dict[str, str]) -> None:
    """Rename tensors in place (the forward graph's names must not clash with the gradient graph's)."""
    graph = model.graph
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info) + list(graph.initializer):
        value.name = renames.get(value.name, value.name)


def opset_of(model) -> int:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 1)


def probe(model, input_name: str, input_shape: tuple[int, ...], batches: tuple[int, ...]) -> Probe:
    """Run the forward graph with every tensor exposed, once per batch size."""
    import onnx
    import onnxruntime as ort

    exposed = onnx.ModelProto.FromString(model.SerializeToString())
    listed = {value.name for value in exposed.graph.output}
    for node in exposed.graph.node:
        for name in node.output:
            if name and name not in listed:
                exposed.graph.output.append(onnx.ValueInfoProto(name=name))
                listed.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    shapes, dtypes, values = [], {}, {}
    rng = np.random.default_rng(0)
    for batch in batches:
        x = rng.standard_normal((batch,) + tuple(input_shape)).astype(np.float32)
        results = session.run(names, {input_name: x})
        shapes.append({name: tuple(np.shape(r)) for name, r in zip(names, results)})
        shapes[-1][input_name] = x.shape
        for name, result in zip(names, results):
            result = np.asarray(result)
            dtypes[name] = result.dtype
            if not np.issubdtype(result.dtype, np.floating) and result.size <= 64 and name not in values:
                values[name] = result
        dtypes[input_name] = x.dtype
    for init in model.graph.initializer:
        array = onnx.numpy_helper.to_array(init)
        for table in shapes:
            table[init.name] = array.shape
        dtypes[init.name] = array.dtype
        if not np.issubdtype(array.dtype, np.floating) and array.size <= 64:
            values[init.name] = array
    return Probe(shapes, dtypes, values)


def active_tensors(model, input_name: str, dtypes: dict[str, np.dtype]) -> set[str]:
    """Floating-point tensors that depend on the input: the ones a gradient flows through."""
    active = {input_name}
    for node in model.graph.node:
        if any(name in active for name in node.input):
            active.update(name for name in node.output
                          if name and np.issubdtype(dtypes.get(name, np.dtype("float32")), np.floating))
    return active


def build_gradient_model(model, score: ScoreKind, input_shape: tuple[int, ...], fixed_batch: int | None):
    """(the ONNX gradient graph of the plain ONNX ``model``, the batch size it is fixed to or None).

    A graph whose batch axis is free but that runs at batch 1 only (a reshape to a constant
    batch inside) is fixed to batch 1, with a warning."""
    from onnx import TensorProto, helper, numpy_helper

    model = normalize(model)
    graph = model.graph
    (source,) = [value.name for value in graph.input]
    output = graph.output[0].name
    batches = (fixed_batch,) if fixed_batch else PROBE_BATCHES
    try:
        found = probe(model, source, input_shape, batches)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own kinds
        at_one = None if fixed_batch else _probe_at_one(model, source, input_shape)
        if at_one is None:
            raise ModelError(f"onnxruntime cannot run the model on inputs shaped {list(input_shape)} at batch "
                             f"{batches[-1]} ({root_cause(error)})") from None
        found, fixed_batch = at_one, 1
    active = active_tensors(model, source, found.dtypes)
    if missing := unsupported(model, active):
        op, name = missing[0]
        raise ModelError(f"igcli cannot differentiate op {op} (node '{name}'); the supported ops are listed in "
                         "docs/onnx.md")
    if output not in active:
        raise ModelError(f"output '{output}' does not depend on input '{source}'")
    initial = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            initial[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    taken = {name for node in graph.node for name in list(node.input) + list(node.output)} | set(initial)
    taken |= {source, output, INPUT, WEIGHTS, SCORES, GRADS}
    build = Builder(taken, TensorProto.FLOAT)
    context = Context(build, found, active, initial)

    scores, seed = _score_head(build, output, found.rank(output), score)
    grads: dict[str, list[str]] = {output: [seed]}
    for node in reversed(list(graph.node)):
        if not any(name in grads for name in node.output):
            continue
        output_grads = [_total(build, grads.pop(name)) if name in grads else None for name in node.output]
        try:
            input_grads = RULES[node.op_type](context, node, output_grads)
        except ModelError:
            raise
        except Exception as error:  # noqa: BLE001 - a rule meeting an unexpected form
            raise ModelError(f"cannot differentiate op {node.op_type} (node '{node.name}': {first_line(error)})") from None
        for name, grad in zip(node.input, input_grads):
            if grad is not None and context.needs(name):
                grads.setdefault(name, []).append(grad)
    if source not in grads:
        raise ModelError(f"no gradient reaches input '{source}' from output '{output}'")
    input_grads = _total(build, grads.pop(source))

    nodes = [helper.make_node("Identity", [INPUT], [source])] if source != INPUT else []
    nodes += list(graph.node) + build.nodes
    nodes += [helper.make_node("Identity", [scores], [SCORES]), helper.make_node("Identity", [input_grads], [GRADS])]
    batch = fixed_batch or "batch"
    classes = int(np.prod(found.shape(output)[1:])) if found.rank(output) > 1 else 1
    new_graph = helper.make_graph(
        nodes, "igcli_gradient_graph",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, *input_shape]),
         helper.make_tensor_value_info(WEIGHTS, TensorProto.FLOAT, [batch, classes])],
        [helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, [batch, classes]),
         helper.make_tensor_value_info(GRADS, TensorProto.FLOAT, [batch, *input_shape])],
        initializer=list(graph.initializer) + build.initializers)
    result = helper.make_model(new_graph, opset_imports=list(model.opset_import), producer_name="igcli")
    result.ir_version = max(model.ir_version, 8)
    for function in model.functions:
        result.functions.append(function)
    return result, fixed_batch


def _probe_at_one(model, source: str, input_shape: tuple[int, ...]) -> Probe | None:
    try:
        found = probe(model, source, input_shape, (1,))
    except Exception:  # noqa: BLE001 - it fails at batch 1 too: the caller reports the first error
        return None
    log.warning("the model's batch axis is free, but it runs at batch 1 only; igcli runs one input at a time")
    return found


def to_float64(model):
    """A copy computing in float64: float32 weights, constants, casts and graph inputs widened."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph

    def widen(tensor):
        if tensor.data_type == TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))

    for init in graph.initializer:
        widen(init)
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "to" and node.op_type == "Cast" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
            elif attr.type == onnx.AttributeProto.TENSOR:
                widen(attr.t)
            elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
                values = np.asarray(attr.f if attr.name == "value_float" else list(attr.floats), np.float64)
                node.ClearField("attribute")
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(values)))
                break
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    del graph.value_info[:]
    return model


def _score_head(build: Builder, output: str, rank: int, score: ScoreKind) -> tuple[str, str]:
    """(scores [N, classes], the gradient reaching ``output``), as the torch route scores a model."""
    logits = build.op("Flatten", [output], axis=1) if rank > 1 else build.op("Unsqueeze", [output, build.ints([1])])
    weights = WEIGHTS
    if ScoreKind(score) is ScoreKind.softmax:
        scores = build.op("Softmax", [logits], axis=-1)
        weighted = build.op("Mul", [weights, scores])
        total = build.op("ReduceSum", [weighted, build.ints([-1])], keepdims=1)
        seed = build.op("Mul", [scores, build.op("Sub", [weights, total])])
    elif ScoreKind(score) is ScoreKind.sigmoid:
        scores = build.op("Sigmoid", [logits])
        slope = build.op("Mul", [scores, build.op("Sub", [build.scalar(1.0), scores])])
        seed = build.op("Mul", [weights, slope])
    else:
        scores, seed = build.op("Identity", [logits]), weights
    return scores, build.op("Reshape", [seed, build.op("Shape", [output])])


def _total(build: Builder, parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else build.op("Sum", parts)
