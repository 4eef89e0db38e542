"""glibc's malloc, set for a process that allocates and frees the same large buffers every batch.

Every forward + backward allocates its activations (the sample CNN: ~30 MiB at 128 points, in
pieces of 1-8 MiB) and frees them again. By default glibc adapts its thresholds as it goes: pieces
above the mmap threshold are mapped and unmapped, and whenever the free top of the heap passes the
trim threshold it goes back to the system. Either way the next batch faults the same pages in
again: on the sample job 20,000-200,000 page faults per 240 images, which cost the engine a fifth
to a third of its time and made most of the run-to-run spread on the benchmark machine
(benchmarks/RESULTS.md). Here both are fixed at the most glibc's adaptation would raise them to:
pieces up to 32 MiB come from the heap, and up to 64 MiB of free heap top stays with the process,
so a run faults its pages in once.

Only the command line calls this: it owns its process. A program that imports igcli keeps its own
malloc settings, and so does a user who set glibc's malloc variables in the environment.
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts
TRIM_THRESHOLD = 64 << 20  # glibc's adaptive trim threshold: twice the mmap one
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds (see above); False where nothing was changed: not
    glibc, or the user set malloc's variables (or GLIBC_TUNABLES) already."""
    if platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mmap first: fixing either threshold stops glibc adapting both, and a trim threshold fixed
    # alone would leave the mmap threshold at its 128 KiB start.
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
