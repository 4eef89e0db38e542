"""How a run uses the machine: one object, made by the caller and passed down the pipeline.

None leaves a choice to igcli, made from the machine where it is used (the function named beside
each field). The model's intra-op threads are the config's ``model.threads``: they are recorded in
the manifest with the rest of the config. ``malloc`` is for the command line, which sets up its
process (runtime/heap.py) before any run.
"""
from __future__ import annotations

from dataclasses import dataclass

from igcli.runtime.heap import MallocSetUp


@dataclass(frozen=True)
class RuntimeOptions:
    chunks_in_flight: int | None = None  # chunks explained at once (pipeline/overlap.py: chunks_in_flight)
    read_ahead: int | None = None  # inputs decoded ahead in a thread (data/prefetch.py: read_ahead)
    writer_threads: int | None = None  # threads writing output files (results/writer.py: writer_threads)
    manifest_every: float = 1.0  # seconds between rewrites of the running manifest.json
    # How ``igcli explain`` sets up malloc (runtime/heap.py): "restart" only where the process is the
    # igcli program itself (cli/launch.py), as it starts the command again; a program calling the
    # commands keeps its process.
    malloc: MallocSetUp = "mallopt"
