"""The one check a gradient graph passes before it is written or run: its input gradients against
the source's own autograd (float32, else float64), on a seeded random batch."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from igcli.backends.base import ScoreKind, apply_score
from igcli.backends.onnx.export import export_gradient_graph
from igcli.backends.onnx.format import read_info, with_metadata
from igcli.backends.onnx.grad import build_gradient_model, to_float64
from igcli.backends.onnx.source import onnx_to_torch
from igcli.backends.onnx_backend import OnnxRuntimeBackend
from igcli.backends.outputs import as_columns, first_output
from igcli.backends.torch_backend import set_eval
from igcli.errors import ModelError


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
    if isinstance(source, nn.Module):
        graph = export_gradient_graph(source, score, input_shape, source_sha256, fixed_batch)
        references = _module_references(source)
    else:
        graph, fixed_batch = build_gradient_model(source, ScoreKind(score), tuple(input_shape), fixed_batch)
        graph = with_metadata(graph, score, source_sha256, tuple(input_shape), fixed_batch)
        references = _onnx_references(source, path)
    return graph, check_gradient_graph(graph, *references, ScoreKind(score))


def _module_references(module: nn.Module) -> tuple[nn.Module, Callable[[], nn.Module | None]]:
    """The module, and a function building its float64 copy (None where it does not convert)."""
    def double():
        try:
            return copy.deepcopy(module).double()
        except Exception:  # noqa: BLE001 - some modules (TorchScript, exported programs) do not convert
            return None
    return module, double


def _onnx_references(model, path) -> tuple[nn.Module, Callable[[], nn.Module | None]]:
    """The torch route in float32, and a function building it in float64 (the graph widened first)."""
    where = Path(path) if path is not None else Path("model.onnx")

    def double():
        try:
            return onnx_to_torch(to_float64(model), where).double()
        except ModelError:
            return None
    return onnx_to_torch(model, where), double


def check_gradient_graph(graph, module: nn.Module, build_double: Callable[[], nn.Module | None], score: ScoreKind,
                         batch: int = 3) -> GradientCheck:
    """The one check before a gradient graph is written or run (export and explain alike).

    Its input gradients on a seeded random batch are compared with the source's own autograd in
    float32 (for ONNX sources, the onnx2fx conversion: an independent implementation of every op).
    Within AGREEMENT they pass. Otherwise float64 autograd decides, with a tolerance set by the
    model's own float32 noise (the float32 route's distance from float64, times 10, at least 1e-3),
    so a correct graph of an ill-conditioned model is never refused. Norms per input, not the
    largest entry: a max-pool whose window holds two values within float32 rounding of each other
    sends the gradient to either, which moves a few entries, not the map."""
    info = read_info(graph)
    assert info is not None, "a gradient graph carries igcli's metadata (with_metadata)"
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
            outputs = first_output(module(part))
            outputs = as_columns(outputs).reshape(len(part), -1)
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
