"""Export a gradient-augmented ONNX graph: (input, target_weights) -> (scores, input_grads).

Two routes, one check. A plain ONNX model is differentiated as ONNX (onnx_grad.py: each node's
vector-Jacobian product written as ONNX nodes). A torch module is traced with ``make_fx``
(symbolic shapes, parameters lifted with ``functional_call``, core ATen decompositions plus the
few backward ops ONNX has no function for), then exported with ``torch.onnx.export(dynamo=True)``.
Either graph is checked (check_gradient_graph) against float64 autograd before anything uses it.
The graph's metadata marks it as igcli's, with the version, the score kind and the source's hash.
"""
from __future__ import annotations

import contextlib
import logging
import re
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from igcli import __version__
from igcli.errors import ModelError, first_line
from igcli.backends.base import ScoreKind, apply_score
from igcli.backends.torch_backend import set_eval

INPUT, WEIGHTS, SCORES, GRADS = "input", "target_weights", "scores", "input_grads"
FALLBACK_BATCH = 16
aten = torch.ops.aten


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


def export_gradient_graph(module: nn.Module, score: ScoreKind, input_shape: tuple[int, ...], source_sha256: str,
                          fixed_batch: int | None = None):
    """The ONNX ModelProto computing F and d(sum_b w_b . F_b)/dx for ``module``.

    The batch axis stays dynamic where the model allows symbolic tracing. Graphs converted from
    ONNX often compute shapes at run time (Shape -> Gather -> Reshape), which only trace with
    concrete sizes; those are exported for a batch of FALLBACK_BATCH, and the runtime pads.
    """
    import onnx

    from igcli.backends.onnx.source import require

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
    return _with_metadata(program.model_proto, score, source_sha256, input_shape, fixed_batch)


def _with_metadata(model, score: ScoreKind, source_sha256: str, input_shape: tuple[int, ...], fixed_batch: int | None):
    import onnx

    metadata = {"igcli.kind": "gradient-graph", "igcli.version": __version__, "igcli.score": ScoreKind(score).value,
                "igcli.source_sha256": source_sha256, "igcli.input_shape": ",".join(map(str, input_shape)),
                "igcli.fixed_batch": str(fixed_batch or "")}
    onnx.helper.set_model_props(model, metadata)
    return model


@dataclass(frozen=True)
class GradientCheck:
    """How far a gradient graph's input gradients are from the reference (the float32 torch route,
    or float64 autograd where the two float32 implementations disagree), per input as
    ||difference|| / ||reference||, worst input; ``noise``: the float32 torch route's own distance
    from float64 (NaN when float64 was not needed)."""

    error: float
    noise: float
    tolerance: float
    reference: str


AGREEMENT = 1e-4  # two independent float32 implementations this close: no wrong rule gives that


def checked_gradient_graph(source, score: ScoreKind, input_shape: tuple[int, ...], source_sha256: str,
                           fixed_batch: int | None = None, path=None):
    """(gradient graph, GradientCheck) for a plain ONNX ModelProto or a torch module.

    The graph is returned only when it passed check_gradient_graph; otherwise ModelError."""
    from igcli.backends.onnx.grad import build_gradient_model

    if isinstance(source, nn.Module):
        graph = export_gradient_graph(source, score, input_shape, source_sha256, fixed_batch)
        references = _module_references(source)
    else:
        graph, fixed_batch = build_gradient_model(source, ScoreKind(score), tuple(input_shape), fixed_batch)
        graph = _with_metadata(graph, score, source_sha256, tuple(input_shape), fixed_batch)
        references = _onnx_references(source, path)
    return graph, check_gradient_graph(graph, *references, ScoreKind(score))


def _module_references(module: nn.Module):
    """The module, and a function building its float64 copy (None where it does not convert)."""
    import copy

    def double():
        try:
            return copy.deepcopy(module).double()
        except Exception:  # noqa: BLE001 - some modules (TorchScript, exported programs) do not convert
            return None
    return module, double


def _onnx_references(model, path):
    """The torch route in float32, and a function building it in float64 (the graph widened first)."""
    from pathlib import Path

    from igcli.backends.onnx.grad import to_float64
    from igcli.backends.onnx.source import onnx_to_torch

    where = Path(path) if path is not None else Path("model.onnx")

    def double():
        try:
            return onnx_to_torch(to_float64(model), where).double()
        except ModelError:
            return None
    return onnx_to_torch(model, where), double


def check_gradient_graph(graph, module: nn.Module, build_double, score: ScoreKind,
                         batch: int = 3) -> GradientCheck:
    """The one check before a gradient graph is written or run (export and explain alike).

    Its input gradients on a seeded random batch are compared with the source's own autograd in
    float32 (for ONNX sources, the onnx2fx conversion: an independent implementation of every op).
    Within AGREEMENT they pass. Otherwise float64 autograd decides, with a tolerance set by the
    model's own float32 noise (the float32 route's distance from float64, times 10, at least 1e-3),
    so a correct graph of an ill-conditioned model is never refused. Norms per input, not the
    largest entry: a max-pool whose window holds two values within float32 rounding of each other
    sends the gradient to either, which moves a few entries, not the map."""
    from igcli.backends.onnx_backend import OnnxRuntimeBackend

    info = read_info(graph)
    runtime = OnnxRuntimeBackend(graph.SerializeToString(), info, torch.device("cpu"))
    size = info.fixed_batch or batch
    x = torch.randn((size,) + info.input_shape, generator=torch.Generator().manual_seed(0))
    weights = torch.softmax(torch.randn(size, runtime.num_classes, generator=torch.Generator().manual_seed(1)), 1)
    _, actual = runtime.scores_and_grads(x, weights)
    _, float32 = _reference_grads(module, score, x, weights, info.fixed_batch)
    agreement = _relative(actual, float32)
    double = build_double() if agreement > AGREEMENT else None
    if agreement <= AGREEMENT or double is None:
        if agreement > 1e-3:
            raise ModelError(f"the gradient graph's input gradients differ from torch autograd by {agreement:.1e} "
                             "(relative), and no float64 reference could decide; not used")
        return GradientCheck(agreement, float("nan"), AGREEMENT if agreement <= AGREEMENT else 1e-3, "float32 torch")
    _, expected = _reference_grads(double, score, x.double(), weights.double(), info.fixed_batch)
    noise, error = _relative(float32, expected), _relative(actual, expected)
    tolerance = max(1e-3, 10 * noise)
    if not error <= tolerance:
        raise ModelError(f"the gradient graph's input gradients differ from float64 autograd by {error:.1e} "
                         f"(relative), beyond this model's float32 noise ({noise:.1e}, tolerance {tolerance:.1e}); "
                         "not used")
    return GradientCheck(error, noise, tolerance, "float64")


def _reference_grads(module: nn.Module, score: ScoreKind, x: Tensor, weights: Tensor, fixed_batch: int | None):
    """Plain autograd through ``module`` (no rewrites), outputs flattened to [batch, classes] as
    the gradient graph's score head does; a fixed-batch module runs slice by slice."""
    set_eval(module)
    step = fixed_batch or len(x)
    scores, grads = [], []
    for start in range(0, len(x), step):
        part = x[start:start + step].clone().requires_grad_(True)
        with torch.enable_grad():
            outputs = _first(module(part))
            outputs = outputs.reshape(len(part), -1) if outputs.dim() > 1 else outputs.unsqueeze(1)
            values = apply_score(score, outputs)
            (grad,) = torch.autograd.grad((values * weights[start:start + step]).sum(), part)
        scores.append(values.detach())
        grads.append(grad)
    return torch.cat(scores), torch.cat(grads)


def _relative(actual: Tensor, expected: Tensor) -> float:
    """The worst input's ||actual - expected|| / ||expected||."""
    difference = (actual.double() - expected.double()).flatten(1).norm(dim=1)
    scale = expected.double().flatten(1).norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    return float((difference / scale).max())


def _ops_named(error: BaseException) -> str:
    """The ATen ops an exporter error chain mentions, which say what to decompose next."""
    text, cause = "", error
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
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.func import functional_call

    params = {name: p.detach() for name, p in module.named_parameters()}
    buffers = {name: b.detach() for name, b in module.named_buffers()}
    dtype = next((t.dtype for t in list(params.values()) + list(buffers.values()) if t.is_floating_point()),
                 torch.float32)
    with torch.no_grad():
        outputs = _first(module(torch.zeros((batch,) + tuple(input_shape), dtype=dtype)))
    classes = outputs.shape[-1] if outputs.dim() > 1 else 1

    def scores_and_grads(params, buffers, x, weights):
        def weighted(x):
            scores = apply_score(score, _as_2d(_first(functional_call(module, (params, buffers), (x,)))))
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


def _first(outputs):
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def _as_2d(outputs: Tensor) -> Tensor:
    return outputs.unsqueeze(1) if outputs.dim() == 1 else outputs


# Backward ops that torch.onnx cannot translate, rewritten as forward ops it can.

def _convolution_backward(grad_out, x, weight, bias_sizes, stride, padding, dilation, transposed,
                          output_padding, groups, output_mask):
    if not output_mask[0]:
        return None, None, None
    if transposed:
        # d conv_transpose / d input is the plain convolution with the same weights.
        zeros = [0] * len(stride)
        return aten.convolution(grad_out, weight, None, stride, padding, dilation, False, zeros, groups), None, None
    # d conv / d input is the transposed convolution with the same weights; output_padding
    # restores the input size that striding rounded away.
    extra = []
    for d in range(len(stride)):
        span = (grad_out.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (weight.shape[2 + d] - 1) + 1
        extra.append(x.shape[2 + d] - span)
    return aten.convolution(grad_out, weight, None, stride, padding, dilation, True, extra, groups), None, None


def _adaptive_avg_pool2d_backward(grad_out, x):
    (out_h, out_w), (in_h, in_w) = grad_out.shape[-2:], x.shape[-2:]
    if in_h % out_h or in_w % out_w:
        raise ModelError(f"adaptive average pooling from {in_h}x{in_w} to {out_h}x{out_w} is not supported in "
                         "gradient graphs (sizes must divide)")
    kh, kw = in_h // out_h, in_w // out_w
    spread = grad_out[..., :, None, :, None].expand(*grad_out.shape[:-2], out_h, kh, out_w, kw)
    return spread.reshape(x.shape) / (kh * kw)


# The helpers below build their index maps from traced torch ops (arange, comparisons), not from
# captured constant tensors, which torch.export cannot lift out of the traced submodule.

def _avg_pool2d_backward(grad_out, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    kernel = _pair(kernel_size)
    stride, padding = _pair(stride or kernel_size), _pair(padding)
    channels = x.shape[1]
    size_in, size_out = [int(d) for d in x.shape[2:]], [int(d) for d in grad_out.shape[2:]]
    if divisor_override:
        divisor = divisor_override
    else:
        rows, columns = (_window_sizes(size_in[d], size_out[d], kernel[d], stride[d], padding[d], count_include_pad,
                                       grad_out) for d in range(2))
        divisor = rows[:, None] * columns[None, :]
    ones = torch.ones(channels, 1, *kernel, dtype=grad_out.dtype, device=grad_out.device)
    extra = [size_in[d] - ((size_out[d] - 1) * stride[d] - 2 * padding[d] + kernel[d]) for d in range(2)]
    # Output positions past the input (ceil_mode) fall outside it: drop them by cropping.
    spread = aten.convolution(grad_out / divisor, ones, None, stride, padding, (1, 1), True,
                              [max(e, 0) for e in extra], channels)
    return spread[..., : size_in[0], : size_in[1]]


def _window_sizes(size_in: int, size_out: int, kernel: int, stride: int, padding: int, include_pad: bool,
                  like: Tensor) -> Tensor:
    """What torch's avg_pool divides by along one axis: border windows (padding, ceil_mode) hold fewer."""
    start = torch.arange(size_out, dtype=like.dtype, device=like.device) * stride - padding
    end = torch.clamp(start + kernel, max=size_in + padding)
    if include_pad:
        return end - start
    return torch.clamp(end, max=size_in) - torch.clamp(start, min=0)


def _upsample_backward(mode: str):
    def backward(grad_out, output_size, input_size, *rest):
        align_corners = bool(rest[0]) if mode == "linear" else False
        scales = (list(rest[1:] if mode == "linear" else rest) + [None, None])[:2]
        rows, columns = (_interpolation_matrix(int(input_size[2 + d]), int(output_size[d]), mode, align_corners,
                                               scales[d], grad_out) for d in range(2))
        # Upsampling is linear and separable: out = A_h x A_w^T, so grad_in = A_h^T grad A_w.
        return torch.matmul(torch.matmul(rows.t(), grad_out), columns)
    return backward


def _interpolation_matrix(size_in: int, size_out: int, mode: str, align_corners: bool, scale, like: Tensor) -> Tensor:
    """A [size_out, size_in] with out = A @ in along one axis, as torch's upsampling computes it."""
    out = torch.arange(size_out, dtype=torch.float64, device=like.device)
    columns = torch.arange(size_in, device=like.device)[None, :]
    ratio = (1.0 / scale) if scale else size_in / size_out
    if mode == "nearest":
        index = torch.clamp(torch.floor(out * ratio), max=size_in - 1).long()
        return (index[:, None] == columns).to(like.dtype)
    if align_corners:
        source = out * ((size_in - 1) / (size_out - 1) if size_out > 1 else 0.0)
    else:
        source = torch.clamp((out + 0.5) * ratio - 0.5, min=0.0)
    low = torch.clamp(torch.floor(source), max=size_in - 1).long()
    high = torch.clamp(low + 1, max=size_in - 1)
    weight = (source - low).to(like.dtype)[:, None]
    return (low[:, None] == columns).to(like.dtype) * (1 - weight) + (high[:, None] == columns).to(like.dtype) * weight


def _pair(value) -> tuple[int, int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return (int(values[0]), int(values[-1]))


BACKWARD_DECOMPOSITIONS = {
    aten.avg_pool2d_backward.default: _avg_pool2d_backward,
    aten.upsample_nearest2d_backward.default: _upsample_backward("nearest"),
    aten.upsample_bilinear2d_backward.default: _upsample_backward("linear"),
    aten.convolution_backward.default: _convolution_backward,
    aten._adaptive_avg_pool2d_backward.default: _adaptive_avg_pool2d_backward,
}
