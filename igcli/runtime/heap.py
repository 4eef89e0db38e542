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

glibc's per-thread cache (tcache) is turned off as well. It keeps up to 7 freed pieces of every
small size for reuse, and those pieces stay wherever they were: inside the holes a batch's freed
activations leave. The next batch's activations then no longer fit there and the heap grows on
top. On the sample job the heap grew for the first four chunks, and 10,000 inputs peaked at
1.14-1.23x the memory of 100; without the cache, 1.00-1.10x (benchmarks/RESULTS.md). The cache
can only be set before the process starts (GLIBC_TUNABLES), so ``igcli explain`` starts itself
again once, with the tunables below (``relaunch_with_malloc_tunables``, ~40 ms, before torch is
imported).

Only the command line does either: it owns its process. A program that imports igcli keeps its own
malloc settings, and so does a user who set glibc's malloc variables in the environment.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts
TRIM_THRESHOLD = 64 << 20  # glibc's adaptive trim threshold: twice the mmap one
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
THRESHOLD_TUNABLES = f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"
MALLOC_TUNABLES = f"glibc.malloc.tcache_count=0:{THRESHOLD_TUNABLES}"


def _malloc_is_ours_to_set() -> bool:
    """glibc, and no malloc setting of the user's (or of an igcli already relaunched) in the environment."""
    if platform.libc_ver()[0] != "glibc":
        return False
    return not (any(name in os.environ for name in _USER_SETTINGS)
                or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""))


def relaunch_with_malloc_tunables() -> None:
    """Replace this process with the same command under MALLOC_TUNABLES (see above); return where
    that is not wanted or not possible, and the command runs with malloc as it is."""
    if not _malloc_is_ours_to_set() or not sys.executable or not sys.orig_argv:
        return
    tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), MALLOC_TUNABLES]))
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "GLIBC_TUNABLES": tunables})
    except OSError:
        return


def set_up_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds (see above) where ``relaunch_with_malloc_tunables``
    could not; False where nothing was changed: not glibc, or malloc's variables (or
    GLIBC_TUNABLES) set them already."""
    if not _malloc_is_ours_to_set():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mmap first: fixing either threshold stops glibc adapting both, and a trim threshold fixed
    # alone would leave the mmap threshold at its 128 KiB start.
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
