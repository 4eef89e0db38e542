"""How a run uses the machine: one object, made by the caller and passed down the pipeline.

None leaves a choice to igcli, made from the machine where it is used (the function named beside
each field). The model's intra-op threads are the config's ``model.threads``: they are recorded in
the manifest with the rest of the config. malloc is set up per process, by the command line
(runtime/heap.py), not per run.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeOptions:
    chunks_in_flight: int | None = None  # chunks explained at once (pipeline/overlap.py: chunks_in_flight)
    read_ahead: int | None = None  # inputs decoded ahead in a thread (data/prefetch.py: read_ahead)
    writer_threads: int | None = None  # threads writing output files (results/writer.py: writer_threads)
    manifest_every: float = 1.0  # seconds between rewrites of the running manifest.json
