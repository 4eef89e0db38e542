"""A torch module's gradient graph: (input, target_weights) -> (scores, input_grads) as ONNX.

The module is traced with ``make_fx`` (symbolic shapes, parameters lifted with ``functional_call``,
core ATen decompositions plus the few backward ops ONNX has no function for: decompositions.py),
then exported with ``torch.onnx.export(dynamo=True)``. Plain ONNX models take the other route
(grad.py); check.py tests either graph against autograd before anything uses it.
"""
from __future__ import annotations

import contextlib
import logging
import re
import warnings

import torch
from torch import Tensor, nn

from igcli.backends.base import ScoreKind, apply_score
from igcli.backends.onnx.decompositions import BACKWARD_DECOMPOSITIONS
from igcli.backends.onnx.format import GRADS, INPUT, SCORES, WEIGHTS, require, with_metadata
from igcli.backends.outputs import as_columns, first_output
from igcli.backends.torch_backend import set_eval
from igcli.errors import ModelError, first_line

FALLBACK_BATCH = 16


def export_gradient_graph(module: nn.Module, score: ScoreKind, input_shape: tuple[int, ...], source_sha256: str,
                          fixed_batch: int | None = None):
    """The ONNX ModelProto computing F and d(sum_b w_b . F_b)/dx for ``module``.

    The batch axis stays dynamic where the model allows symbolic tracing. Graphs converted from
    ONNX often compute shapes at run time (Shape -> Gather -> Reshape), which only trace with
    concrete sizes; those are exported for a batch of FALLBACK_BATCH, and the runtime pads.
    """
    require("onnxscript")  # torch.onnx's exporter
    set_eval(module)
    try:
        traced = _trace_gradients(module, ScoreKind(score), input_shape, fixed_batch or 2, symbolic=fixed_batch is None)
    except _DataDependentShapes:
        fixed_batch = FALLBACK_BATCH
        traced = _trace_gradients(module, ScoreKind(score), input_shape, fixed_batch, symbolic=False)
    example = _example(traced.dtype, input_shape, traced.classes, fixed_batch or 2)
    batch = None if fixed_batch else torch.export.Dim("batch", min=1, max=65536)
    dynamic = None if batch is None else ({0: batch}, {0: batch})
    try:
        with warnings.catch_warnings(), _quiet_logger("torch.onnx"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(traced, example, dynamo=True, dynamic_shapes=dynamic, verbose=False,
                                        input_names=[INPUT, WEIGHTS], output_names=[SCORES, GRADS])
    except Exception as error:  # noqa: BLE001 - the exporter raises many kinds
        raise ModelError(f"cannot export the gradient graph to ONNX ({first_line(error)}{_ops_named(error)})") from None
    return with_metadata(program.model_proto, score, source_sha256, input_shape, fixed_batch)


def _ops_named(error: BaseException) -> str:
    """The ATen ops an exporter error chain mentions, which say what to decompose next."""
    text = ""
    cause: BaseException | None = error
    while cause is not None:
        text += str(cause)
        cause = cause.__cause__ or cause.__context__
    ops = sorted(set(re.findall(r"aten\.[A-Za-z0-9_]+", text)))
    return f"; ops: {', '.join(ops[:5])}" if ops else ""


@contextlib.contextmanager
def _quiet_logger(name: str):
    """The exporter logs one warning per torchvision op it skips; users need none of them."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


class _GradientModule(nn.Module):
    """Holds the traced graph and the frozen weights it takes as inputs."""

    def __init__(self, graph: torch.fx.GraphModule, params: dict[str, Tensor], buffers: dict[str, Tensor],
                 classes: int, dtype: torch.dtype):
        super().__init__()
        self.graph = graph
        self.names = list(params)
        self.buffer_names = list(buffers)
        for index, tensor in enumerate(params.values()):
            self.register_buffer(f"param_{index}", tensor)
        for index, tensor in enumerate(buffers.values()):
            self.register_buffer(f"buffer_{index}", tensor)
        self.classes, self.dtype = classes, dtype

    def forward(self, x: Tensor, weights: Tensor):
        params = {name: getattr(self, f"param_{i}") for i, name in enumerate(self.names)}
        buffers = {name: getattr(self, f"buffer_{i}") for i, name in enumerate(self.buffer_names)}
        return self.graph(params, buffers, x, weights)


class _DataDependentShapes(Exception):
    """Symbolic tracing met a shape computed from tensor values."""


def _trace_gradients(module: nn.Module, score: ScoreKind, input_shape: tuple[int, ...], batch: int,
                     symbolic: bool = True) -> _GradientModule:
    from torch._decomp import core_aten_decompositions
    from torch.func import functional_call
    from torch.fx.experimental.proxy_tensor import make_fx

    params = {name: p.detach() for name, p in module.named_parameters()}
    buffers = {name: b.detach() for name, b in module.named_buffers()}
    dtype = next((t.dtype for t in list(params.values()) + list(buffers.values()) if t.is_floating_point()),
                 torch.float32)
    with torch.no_grad():
        outputs = first_output(module(torch.zeros((batch,) + tuple(input_shape), dtype=dtype)))
    classes = outputs.shape[-1] if outputs.dim() > 1 else 1

    def scores_and_grads(params, buffers, x, weights):
        def weighted(x):
            scores = apply_score(score, as_columns(first_output(functional_call(module, (params, buffers), (x,)))))
            return (scores * weights).sum(), scores

        grads, scores = torch.func.grad(weighted, has_aux=True)(x)
        return scores, grads

    decompositions = dict(core_aten_decompositions())
    decompositions.update(BACKWARD_DECOMPOSITIONS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = make_fx(scores_and_grads, decomposition_table=decompositions,
                            tracing_mode="symbolic" if symbolic else "real")(
                params, buffers, *_example(dtype, input_shape, classes, batch))
    except ModelError:
        raise
    except Exception as error:  # noqa: BLE001 - tracing raises many kinds
        if symbolic and "data-dependent" in str(error):
            raise _DataDependentShapes() from None
        raise ModelError(f"cannot trace the model's gradient ({first_line(error)})") from None
    return _GradientModule(graph, params, buffers, classes, dtype)


def _example(dtype: torch.dtype, input_shape: tuple[int, ...], classes: int, batch: int) -> tuple[Tensor, Tensor]:
    x = torch.zeros((batch,) + tuple(input_shape), dtype=dtype)
    weights = torch.zeros(batch, classes, dtype=dtype)
    return x, weights
