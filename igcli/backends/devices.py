"""Whether a device a run names is on this machine; when not, one line saying why and what to do.

A device that is not here is a usage error (exit 2, nothing ran), wherever it was named: --device,
a --device list, ``device:`` in the config or --set.
"""
from __future__ import annotations

import torch

from igcli.errors import UsageError


def missing_device(name: str) -> str | None:
    """Why ``name`` (auto, cpu, cuda, cuda:N) cannot be used here, with the fix; None when it can."""
    head, _, index = name.partition(":")
    if head != "cuda":
        return None
    if not torch.cuda.is_available():
        return f"no CUDA device here (torch {torch.__version__}); use --device cpu or install a CUDA build of torch"
    count = torch.cuda.device_count()
    if index.isdigit() and int(index) >= count:
        return f"{head}:{index} is not here (CUDA devices: cuda:0..cuda:{count - 1}); see igcli env"
    return None


def require_device(name: str, where: str) -> None:
    """UsageError naming ``where`` (e.g. "--device cuda", "cfg.yaml:3: device cuda") when ``name`` is not here."""
    problem = missing_device(name)
    if problem is not None:
        raise UsageError(f"{where}: {problem}")
