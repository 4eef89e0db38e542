"""PyTorch runtime behind the Backend interface."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import ScoreKind, apply_score


class TorchBackend:
    """Runs an ``nn.Module`` (eager, TorchScript or an exported program's module) in eval mode.

    Parameters are frozen once here, so a backward computes input gradients only.
    """

    def __init__(self, module: nn.Module, score_kind: ScoreKind, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.module = module.to(self.device)
        set_eval(self.module)
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.dtype = _floating_dtype(self.module)
        self.score_kind = ScoreKind(score_kind)

    def _forward(self, x: Tensor) -> Tensor:
        outputs = self.module(x)
        if isinstance(outputs, (tuple, list)):
            outputs = outputs[0]
        if outputs.dim() == 1:
            outputs = outputs.unsqueeze(1)
        if outputs.dim() != 2 or outputs.shape[0] != x.shape[0]:
            raise ValueError(f"model output has shape {list(outputs.shape)}; expected [batch, classes]")
        return apply_score(self.score_kind, outputs)

    def scores(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self._forward(x)

    def scores_and_grads(self, x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            scores = self._forward(x)
            (grads,) = torch.autograd.grad((scores * weights).sum(), x)
        return scores.detach(), grads


def set_eval(module: nn.Module) -> None:
    """Eval mode (dropout off, batch-norm statistics frozen) for any module kind."""
    # Exported programs' modules refuse .eval(); they were exported in eval mode already.
    try:
        module.eval()
    except (NotImplementedError, RuntimeError):
        pass


def _floating_dtype(module: nn.Module) -> torch.dtype:
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()
