"""The one interface between the engine and any model runtime."""
from __future__ import annotations

import enum
from typing import Protocol

import torch
from torch import Tensor


class ScoreKind(str, enum.Enum):
    """What F is: the quantity whose change the attributions explain.

    ``softmax`` is the paper's choice (class probability); captum attributes the raw output,
    which is ``logits`` here; ``sigmoid`` suits multi-label models.
    """

    softmax = "softmax"
    logits = "logits"
    sigmoid = "sigmoid"


class Precision(str, enum.Enum):
    """The arithmetic of the gradient evaluations along the path.

    ``bfloat16``/``float16`` run the model under autocast (float32 accumulation inside matrix
    products and convolutions, softmax in float32) for speed on GPUs; the end points F(x), F(x')
    stay float32, so each record's completeness error measures what the lower precision cost.
    """

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.value]


def apply_score(kind: ScoreKind, outputs: Tensor) -> Tensor:
    """Turn raw model outputs [B, classes] into F as configured."""
    if kind is ScoreKind.softmax:
        return torch.softmax(outputs, dim=-1)
    if kind is ScoreKind.sigmoid:
        return torch.sigmoid(outputs)
    return outputs


class Backend(Protocol):
    """Scores and input gradients for a batch; nothing about files, configs or paths."""

    device: torch.device
    dtype: torch.dtype
    score_kind: ScoreKind
    runtime: str  # what runs the model: torch | onnxruntime

    def scores(self, x: Tensor) -> Tensor:
        """F(x) as [B, classes], without gradients."""
        ...

    def scores_and_grads(self, x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """F(x) and d(sum_b weights[b] . F(x)[b]) / dx: one forward, one backward, whole batch."""
        ...
