"""The adaptive rule's stored maps, kept from one chunk to the next (``MapStorage`` of attribution/adaptive.py).

Memory policy lives here, not in the maths: block-sized buffers that glibc serves by mmap, and a
pool that lends one buffer per chunk in flight (see docs/performance.md#map-buffers).
"""
from __future__ import annotations

import threading

from torch import Tensor

# The stored maps grow in whole blocks of this size. glibc serves a request this large by mmap
# whatever its dynamic threshold (which stops at 32 MiB), so a buffer outgrown and dropped goes
# back to the system instead of fragmenting the heap. Pages never written are never resident.
MAP_BLOCK_BYTES = 32 << 20
# A CPU chunk whose maps at every path's step budget fit this borrows that much at once: pages never
# written are never resident, and growing a buffer held its old and new copies at once (2x the maps).
WHOLE_RESERVE_BYTES = 1 << 30


class MapBuffers:
    """Memory for the stored maps: a run (its job) holds one, and each chunk borrows a buffer from
    it and gives it back, so chunks in flight at once get one each.

    On the CPU a kept buffer's pages fault in once per run rather than once per chunk. Other
    devices' allocators keep freed memory themselves, and a buffer handed between CUDA streams
    would need their ordering besides, so they borrow nothing here."""

    def __init__(self) -> None:
        self._free: list[Tensor] = []
        self._lock = threading.Lock()

    def rows_for(self, needed: int, held: int, row_bytes: int, most: int, on_cpu: bool) -> int:
        """Rows for the stored maps: the most the chunk can hold where that fits WHOLE_RESERVE_BYTES on
        the CPU (a GPU commits what it allocates, so there the buffer grows), else twice what is held,
        capped at the most; in whole MAP_BLOCK_BYTES (a borrowed buffer may hold more)."""
        whole = on_cpu and most * row_bytes <= WHOLE_RESERVE_BYTES
        rows = max(needed, most if whole else min(2 * held, most))
        blocks = -(-rows * row_bytes // MAP_BLOCK_BYTES)
        return max(needed, blocks * MAP_BLOCK_BYTES // row_bytes)

    def borrow(self, elements: int, like: Tensor) -> Tensor:
        """A flat buffer of at least ``elements`` of like's dtype, on its device."""
        if like.device.type == "cpu":
            with self._lock:
                kept = [b for b in self._free if b.dtype == like.dtype]
                if kept:
                    self._free.remove(kept[0])
                    if kept[0].numel() >= elements:
                        return kept[0]
        return like.new_empty(elements)  # a kept buffer too small is dropped: one buffer per chunk in flight

    def give_back(self, buffer: Tensor) -> None:
        if buffer.device.type == "cpu":
            with self._lock:
                self._free.append(buffer)
