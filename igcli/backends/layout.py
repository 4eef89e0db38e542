"""How a model takes its input: layout (NCHW or NHWC), channel order (RGB or BGR), fixed batch.

The engine always works on NCHW float tensors in RGB (or L) order, and heatmaps are drawn from
them in the image's own orientation. Where the model wants something else, ``AdaptedBackend``
permutes and flips its input, and its input gradients back: both are pure rearrangements of
coordinates, so the attributions are the model's own, rearranged. The layout of a torch module
is found by running it once (``probe_module``), which also finds its outputs and a batch size
fixed at tracing; an ONNX input tells its layout by its shape (``onnx_layout``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from igcli.backends.base import Backend
from igcli.backends.outputs import OutputChoiceError, SelectedOutput, Selector, select_output, selecting
from igcli.backends.torch_backend import _floating_dtype
from igcli.errors import ConfigError, ModelError, root_cause

log = logging.getLogger("igcli")
LAYOUTS = ("NCHW", "NHWC")
PROBE_SIZE = 224  # height and width of the probe input where nothing fixes the input size


@dataclass(frozen=True)
class InputInterface:
    """What the model's input looks like, relative to igcli's NCHW RGB tensors."""

    layout: str = "NCHW"
    reverse_channels: bool = False  # the model takes BGR
    fixed_batch: int | None = None  # the only batch size the model runs at

    @property
    def plain(self) -> bool:
        return self.layout == "NCHW" and not self.reverse_channels and self.fixed_batch is None

    def to_model(self, x: Tensor) -> Tensor:
        if self.reverse_channels:
            x = x.flip(1)
        return x.permute(0, 2, 3, 1) if self.layout == "NHWC" else x

    def from_model(self, grads: Tensor) -> Tensor:
        if self.layout == "NHWC":
            grads = grads.permute(0, 3, 1, 2)
        return grads.flip(1) if self.reverse_channels else grads

    def model_shape(self, chw: tuple[int, ...]) -> tuple[int, ...]:
        """A [C, H, W] input shape (without batch) as the model takes it."""
        return (chw[1], chw[2], chw[0]) if self.layout == "NHWC" and len(chw) == 3 else tuple(chw)


class AdaptedBackend:
    """A Backend taking NCHW RGB batches of any size for a model that takes ``interface``'s."""

    def __init__(self, inner: Backend, interface: InputInterface):
        self.inner, self.interface = inner, interface
        self.device, self.dtype, self.score_kind, self.runtime = inner.device, inner.dtype, inner.score_kind, inner.runtime

    def scores(self, x: Tensor) -> Tensor:
        return torch.cat([self.inner.scores(self.interface.to_model(part)) for part, _ in self._parts(x, None)])

    def scores_and_grads(self, x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        results = [self.inner.scores_and_grads(self.interface.to_model(part), w) for part, w in self._parts(x, weights)]
        scores = torch.cat([s for s, _ in results])
        grads = torch.cat([self.interface.from_model(g) for _, g in results])
        return scores, grads.contiguous()

    def _parts(self, x: Tensor, weights: Tensor | None):
        size = self.interface.fixed_batch or len(x)
        for start in range(0, len(x), max(1, size)):
            yield x[start:start + size], None if weights is None else weights[start:start + size]


def adapted(backend: Backend, interface: InputInterface) -> Backend:
    return backend if interface.plain else AdaptedBackend(backend, interface)


def onnx_layout(shape: tuple[Any, ...]) -> str | None:
    """NCHW or NHWC where a 4-D ONNX input's shape tells (channels 1 or 3 at one end only), else None."""
    if len(shape) != 4:
        return None
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first != last:
        return "NCHW" if first else "NHWC"
    return None


def describe_layout(shapes: list[tuple[Any, ...]]) -> str:
    """What `igcli inspect` says of an ONNX model's input layout."""
    layout = onnx_layout(shapes[0]) if len(shapes) == 1 else None
    if layout is not None:
        return layout
    if len(shapes) == 1 and len(shapes[0]) == 4:
        return "unknown (NCHW unless input.layout says NHWC)"
    return "not an image input"


def resolve_layout(detected: str | None, configured: str, where: str) -> str:
    """The layout to use: the configured one, which must not contradict what the model tells."""
    if configured == "auto":
        return detected or "NCHW"
    if detected is not None and detected != configured:
        raise ConfigError(f"input.layout is {configured} but {where} takes {detected}; remove input.layout "
                          f"or set it to {detected}")
    return configured


@dataclass
class ProbeResult:
    """The module to run, and how its input differs from igcli's tensors."""

    module: nn.Module  # returns the selected output alone
    interface: InputInterface


def probe_module(module: nn.Module, shape: tuple[int, ...], interface: InputInterface, layout: str,
                 output: Selector, device: torch.device, size_known: bool) -> ProbeResult:
    """Run ``module`` on zeros shaped [batch, C, H, W] (``shape``) in each layout ``layout``
    allows (auto: NCHW, then NHWC), at batch 2 and else 1: the first that runs sets the layout and
    a fixed batch of 1; its outputs must be one tensor or be chosen by ``output``.

    Where nothing fixed the input size (``size_known`` False) and no attempt runs, the module is
    returned as it is (``output`` picked at each call): the first image's check decides. Else the
    error is a ModelError naming its root cause."""
    dtype = _floating_dtype(module)
    layouts = LAYOUTS if layout == "auto" else (layout,)
    failures: list[BaseException] = []
    for candidate in layouts:
        trial = replace(interface, layout=candidate)
        for batch in (2, 1):
            try:  # the zeros too: an input too large for memory is this model's failure to take it
                x = trial.to_model(torch.zeros((batch,) + tuple(shape), dtype=dtype, device=device))
                with torch.no_grad():
                    outputs = module(x)
                chosen = select_output(outputs, output, batch)
            except OutputChoiceError:
                raise
            except Exception as error:  # noqa: BLE001 - any failure means "not this way"
                failures.append(error)
                continue
            if chosen.dim() == 0 or chosen.shape[0] != batch:
                failures.append(ValueError(f"model output has shape {list(chosen.shape)} for a batch of {batch}"))
                continue
            if candidate != "NCHW" and layout == "auto":
                log.info("the model takes %s inputs; igcli permutes its NCHW tensors to match", candidate)
            fixed = 1 if batch == 1 else None
            if fixed:
                log.warning("the model runs at batch size 1 only (traced at a fixed batch?); igcli runs it one "
                            "input at a time, which is slower: export it with a dynamic batch to run faster")
            return ProbeResult(selecting(module, outputs, output), replace(trial, fixed_batch=fixed))
    if not size_known:
        chosen = module if output is None else SelectedOutput(module, output)
        return ProbeResult(chosen, replace(interface, layout="NCHW" if layout == "auto" else layout))
    cause = root_cause(failures[0 if len(failures) < 2 else 1])
    raise ModelError(f"model rejected an input shaped {[1] + list(shape)} ({cause}); "
                     "check input.mode, input.layout, input.resize and input.crop")
