"""What F is and the arithmetic it runs in: the backend choices a config names, without torch,
so that reading and checking a config imports no model runtime."""
from __future__ import annotations

import enum
from typing import Any


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
    def torch_dtype(self) -> Any:
        """The torch.dtype (torch is imported here, on first use, not with the config)."""
        import torch

        return getattr(torch, self.value)
