"""``--variant`` strings shared by the end-to-end benchmarks: config overrides ("key=value", as
``--set`` takes them) mixed with settings that are not config keys (THREAD_KEYS), so that several
settings are timed in one process, alternating, against the same captum runs."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import torch

from igcli.runtime.options import RuntimeOptions

# writers: writer threads; read_ahead: inputs decoded ahead; in_flight: chunks explained at once;
# cudnn_benchmark=1: cuDNN's autotuner; switch_us: the interpreter's thread switch interval (µs),
# how long a thread that launches GPU work may wait for the GIL while another holds it.
THREAD_KEYS = ("writers", "read_ahead", "in_flight", "cudnn_benchmark", "switch_us")


def overrides(variant: str) -> list[str]:
    """The variant's config overrides."""
    return [t for t in variant.split() if t.split("=")[0] not in THREAD_KEYS]


def threads(variant: str) -> dict[str, int]:
    """The variant's other settings."""
    return {k: int(v) for k, _, v in (t.partition("=") for t in variant.split()) if k in THREAD_KEYS}


@contextmanager
def applied(settings: dict[str, int]) -> Iterator[RuntimeOptions]:
    """Run with ``settings`` (from ``threads``): the RuntimeOptions to pass to explain_inputs (or a
    job), and the process-wide settings for the block only."""
    torch.backends.cudnn.benchmark = bool(settings.get("cudnn_benchmark"))
    interval = sys.getswitchinterval()
    if "switch_us" in settings:
        sys.setswitchinterval(settings["switch_us"] / 1e6)
    try:
        yield RuntimeOptions(chunks_in_flight=settings.get("in_flight"), read_ahead=settings.get("read_ahead"),
                             writer_threads=settings.get("writers"))
    finally:
        torch.backends.cudnn.benchmark = False
        sys.setswitchinterval(interval)
