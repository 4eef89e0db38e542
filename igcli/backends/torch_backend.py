"""PyTorch runtime behind the Backend interface."""
from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
from torch import Tensor, nn

from igcli.backends.base import Precision, ScoreKind, apply_score
from igcli.backends.outputs import as_columns, select_output
from igcli.backends.rewrites.fold import fold_batch_norms
from igcli.backends.rewrites.pool_first import pool_before_relu

FLOAT16_GRAD_SCALE = 1024.0


class TorchBackend:
    """Runs an ``nn.Module`` (eager, TorchScript or an exported program's module) in eval mode.

    Parameters are frozen once here, so a backward computes input gradients only. Where the model
    can be traced, batch norms are folded into the layers before them (backends/rewrites/fold.py) and max
    pools run before the ReLUs that feed them (backends/rewrites/pool_first.py).
    Convolutional models run channels-last, whose pooling and convolution kernels are faster on
    the CPU as on GPUs; oneDNN keeps kernels per batch shape, which the engine bounds by padding batches to a few
    sizes (batching.SHAPE_BUCKETS: without it, channels-last grew memory with every new size). With a
    ``precision`` below float32, path points run under autocast (accumulation stays float32), while
    ``scores`` -- F(x) and F(x'), which every completeness error is measured against -- stay float32.
    ``rewrite_graph`` False skips the rewrites (they trace the model), ``channels_last`` False the
    layout: see text_model.document_backend.
    """

    runtime = "torch"

    def __init__(self, module: nn.Module, score_kind: ScoreKind, device: torch.device | str = "cpu",
                 precision: Precision | str = Precision.float32, channels_last: bool = True,
                 rewrite_graph: bool = True):
        self.device = torch.device(device)
        set_eval(module)
        module = module.to(self.device)
        self.module = pool_before_relu(fold_batch_norms(module)) if rewrite_graph else module
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.dtype = _floating_dtype(self.module)
        self.score_kind = ScoreKind(score_kind)
        self.precision = Precision(precision)
        self.channels_last = channels_last and _convolutional(self.module) and _to_channels_last(self.module)
        self.head: Callable[[Tensor], Tensor] | None = None  # None: apply_score on [batch, classes]

    def with_head(self, head: Callable[[Tensor], Tensor]) -> "TorchBackend":
        """This backend (same module) with F = head(raw outputs), such as a region sum
        (backends/region.py). F is then whatever the head makes of the outputs: the engine predicts
        no end slopes for it (score kind logits)."""
        view = copy.copy(self)
        view.head, view.score_kind = head, ScoreKind.logits
        return view

    def _forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        outputs = select_output(self.module(x), batch=len(x))  # several outputs: refused, see backends/outputs.py
        if self.head is not None:
            return self.head(outputs)
        outputs = as_columns(outputs)
        if outputs.dim() != 2 or outputs.shape[0] != x.shape[0]:
            raise ValueError(f"model output has shape {list(outputs.shape)}; expected [batch, classes]")
        return apply_score(self.score_kind, outputs)

    def scores(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self._forward(x)

    def scores_and_grads(self, x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        # float16 gradients deep in a network underflow, so its backward runs on a scaled seed (as
        # in AMP); where the scale overflows somewhere, the batch is redone in float32.
        scale = FLOAT16_GRAD_SCALE if self.precision is Precision.float16 else 1.0
        scores, grads = self._evaluate(x, weights, self.precision, scale)
        if scale != 1.0 and not torch.isfinite(grads).all():
            scores, grads = self._evaluate(x, weights, Precision.float32, 1.0)
        return scores.to(self.dtype), grads

    def _evaluate(self, x: Tensor, weights: Tensor, precision: Precision, scale: float) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            with self._autocast(precision):
                scores = self._forward(x)
            # The scores leave autocast as float32 (softmax/sigmoid autocast to float32), so the
            # weighted sum and the gradients that reach x are float32 as well.
            (grads,) = torch.autograd.grad((scores.float() * weights).sum() * scale, x)
        return scores.detach(), grads / scale if scale != 1.0 else grads

    def _autocast(self, precision: Precision):
        if precision is Precision.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=precision.torch_dtype)


def set_eval(module: nn.Module) -> None:
    """Eval mode (dropout off, batch-norm statistics frozen) for any module kind."""
    # Exported programs' modules refuse .eval(); they were exported in eval mode already.
    try:
        module.eval()
    except (NotImplementedError, RuntimeError):
        pass


def _convolutional(module: nn.Module) -> bool:
    return any(p.dim() == 4 for p in list(module.parameters()) + list(module.buffers()))


def _to_channels_last(module: nn.Module) -> bool:
    """Convert 4-D weights in place; False where a module kind refuses (then inputs stay as given)."""
    try:
        module.to(memory_format=torch.channels_last)
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return True


def _floating_dtype(module: nn.Module) -> torch.dtype:
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()
