"""glibc's malloc, set for a process that allocates and frees the same large buffers every batch.

Every forward + backward allocates its activations and frees them again. By default glibc adapts
its thresholds as it goes: pieces above the mmap threshold are mapped and unmapped, and whenever
the free top of the heap passes the trim threshold it goes back to the system, so the next batch
faults the same pages in again. Here both are fixed at the most glibc's adaptation would raise them
to: pieces up to 32 MiB come from the heap, and up to 64 MiB of free heap top stays with the
process, so a run faults its pages in once.

glibc's per-thread cache (tcache) is turned off as well: the freed small pieces it keeps stay
inside the holes a batch's freed activations leave, the next batch's activations no longer fit
there, and the heap grows on top, run after run. The cache can only be set before the process
starts (GLIBC_TUNABLES), so ``igcli explain`` starts itself again once, before torch is imported.
Figures, and the alternatives measured (mallopt alone, jemalloc, tcmalloc): docs/performance.md,
"malloc".

Only the command line does either: it owns its process. A program that imports igcli keeps its own
malloc settings, and so does a user who set glibc's malloc variables in the environment.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys
from typing import Literal

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts
TRIM_THRESHOLD = 64 << 20  # glibc's adaptive trim threshold: twice the mmap one
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
THRESHOLD_TUNABLES = f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"
MALLOC_TUNABLES = f"glibc.malloc.tcache_count=0:{THRESHOLD_TUNABLES}"

MallocSetUp = Literal["restart", "mallopt", "none"]


def set_up_malloc(how: MallocSetUp) -> bool:
    """Set malloc up for this process (see above), where it is glibc's and the environment did not:
    ``restart`` replaces the process with the same command under MALLOC_TUNABLES (only the process
    that is the ``igcli`` program itself may: runtime/options.py), falling back to ``mallopt``,
    which fixes the two thresholds in place. Returns whether this call changed anything."""
    if how == "none" or not _malloc_is_ours_to_set():
        return False
    if how == "restart":
        _restart_with_tunables()  # returns only where the process cannot be replaced
    return _fix_thresholds()


def _malloc_is_ours_to_set() -> bool:
    """glibc, and no malloc setting of the user's (or of an igcli already restarted) in the environment."""
    if platform.libc_ver()[0] != "glibc":
        return False
    return not (any(name in os.environ for name in _USER_SETTINGS)
                or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""))


def _restart_with_tunables() -> None:
    if not sys.executable or not sys.orig_argv:
        return
    tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), MALLOC_TUNABLES]))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "GLIBC_TUNABLES": tunables})
    except OSError:
        return


def _fix_thresholds() -> bool:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mmap first: fixing either threshold stops glibc adapting both, and a trim threshold fixed
    # alone would leave the mmap threshold at its 128 KiB start.
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
