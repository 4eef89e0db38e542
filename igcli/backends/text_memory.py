"""``batch_size: auto`` for text models: path points per backward from the activations the model
saves on a document of its longest length (``max_length`` tokens, the most a document keeps after
truncation), measured as for images (backends/memory.py). A transformer's activations grow with
the length (attention with its square), so the longest document bounds every batch."""
from __future__ import annotations

import torch

from igcli.backends.memory import FALLBACK_POINTS, GPU_POINTS, auto_points


def text_auto_points(model, device: torch.device) -> int:
    """Path points per backward (all chunks in flight together) for a text model's ``batch_size: auto``."""
    if device.type != "cpu":
        return GPU_POINTS
    length = int(model.max_length)
    token = model.tokenizer.pad_id if model.tokenizer.pad_id is not None else 0
    ids = torch.full((length,), token, dtype=torch.long)
    try:
        backend = model.backend_for(ids, torch.ones(length, dtype=torch.long))
        return auto_points(backend, model.embed(ids), device)
    except Exception:  # noqa: BLE001 - a model that fails here fails the first document's check, in its words
        return FALLBACK_POINTS
