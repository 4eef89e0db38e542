"""A torch model seen from one of its inner layers: IG at a layer (captum's LayerIntegratedGradients).

The backend's input row is [h, x] flattened into one vector: h, the layer's output, replaces what
the layer computes on x; x, the model input, feeds every branch that does not pass through the
layer. Layer IG then is plain IG from [h(x'), x] to [h(x), x] (attribution/layer.py): the x part
does not move, so it gets no attribution and needs no gradient.
"""
from __future__ import annotations

import difflib
import math
import threading

import torch
from torch import Tensor, nn

from igcli.backends.base import ScoreKind, apply_score
from igcli.backends.outputs import select_output
from igcli.backends.torch_backend import _floating_dtype, set_eval
from igcli.errors import ConfigError


def find_layer(module: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (as ``named_modules`` spells it); a ConfigError naming the
    nearest one otherwise."""
    layers = dict(module.named_modules())
    if name not in layers or name == "":
        close = difflib.get_close_matches(name, [n for n in layers if n], n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"modules: {', '.join(list(layers)[1:13])}"
        raise ConfigError(f"layer '{name}': no such module in the model; {hint}")
    return layers[name]


class LayerBackend:
    """The Backend interface over rows [h, x] (see the module docstring), for ``module``'s layer
    ``name``. ``input_shape``: one input's [C, H, W]."""

    runtime = "torch"

    def __init__(self, module: nn.Module, name: str, score_kind: ScoreKind, input_shape: tuple[int, ...],
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        set_eval(module)
        self.module = module.to(self.device)
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.layer = find_layer(self.module, name)
        # One hook for good, reading what to do from a thread-local: chunks in flight on other
        # threads run the same module at once.
        self._local = threading.local()
        self.layer.register_forward_hook(self._on_output)
        self.dtype = _floating_dtype(self.module)
        self.score_kind = ScoreKind(score_kind)
        self.input_shape = tuple(input_shape)
        probe = torch.zeros((1,) + self.input_shape, dtype=self.dtype, device=self.device)
        self.layer_shape = tuple(self.activations(probe).shape[1:])
        self.layer_size = math.prod(self.layer_shape)

    def _on_output(self, _module, _inputs, output):
        # A forward hook's return value replaces the layer's output; None leaves it.
        replace, seen = getattr(self._local, "replace", None), getattr(self._local, "seen", None)
        if seen is not None:
            seen.append(output)
        return replace

    def activations(self, x: Tensor) -> Tensor:
        """The layer's output on inputs ``x`` [B, C, H, W]."""
        self._local.seen = []
        try:
            with torch.no_grad():
                self.module(x)
            seen = self._local.seen
        finally:
            self._local.seen = None
        if not seen or not isinstance(seen[0], Tensor):
            raise ConfigError("layer: the module ran no tensor output on this input; name a layer the forward calls")
        return seen[0]

    def rows(self, h: Tensor, x: Tensor) -> Tensor:
        """[B, layer size + input size]: the rows this backend takes."""
        return torch.cat([h.flatten(1), x.flatten(1)], dim=1)

    def split(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        h, x = rows[:, : self.layer_size], rows[:, self.layer_size:]
        return h.reshape((-1,) + self.layer_shape), x.reshape((-1,) + self.input_shape)

    def _forward(self, rows: Tensor) -> Tensor:
        h, x = self.split(rows)
        self._local.replace = h
        try:
            outputs = select_output(self.module(x), batch=len(x))
        finally:
            self._local.replace = None
        if outputs.dim() == 1:
            outputs = outputs.unsqueeze(1)
        return apply_score(self.score_kind, outputs)

    def scores(self, rows: Tensor) -> Tensor:
        with torch.no_grad():
            return self._forward(rows)

    def scores_and_grads(self, rows: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            h, x = rows[:, : self.layer_size].detach().requires_grad_(True), rows[:, self.layer_size:]
            scores = self._forward(torch.cat([h, x], dim=1))
            (grad_h,) = torch.autograd.grad((scores * weights).sum(), h)
        # The x part's gradient is left zero: its path does not move, so it adds nothing.
        return scores.detach(), torch.cat([grad_h, torch.zeros_like(x)], dim=1)
