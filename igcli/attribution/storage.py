"""Where the adaptive rule's stored maps live: a protocol, and the plain storage that keeps nothing."""
from __future__ import annotations

from typing import Protocol

from torch import Tensor


class MapStorage(Protocol):
    """Where the stored maps live (runtime/buffers.MapBuffers keeps them from chunk to chunk)."""

    def rows_for(self, needed: int, held: int, row_bytes: int, most: int, on_cpu: bool) -> int:
        """Rows to allocate for ``needed`` rows when ``held`` are in use, each ``row_bytes`` long;
        ``most``: the rows a chunk holds when every path reaches its step budget."""
        ...

    def borrow(self, elements: int, like: Tensor) -> Tensor:
        """A flat buffer of at least ``elements`` of like's dtype, on its device."""
        ...

    def give_back(self, buffer: Tensor) -> None:
        ...


class FreshStorage:
    """The plain MapStorage: a new buffer each time, doubling as the maps grow; nothing kept."""

    def rows_for(self, needed: int, held: int, row_bytes: int, most: int, on_cpu: bool) -> int:
        return max(needed, min(2 * held, most))

    def borrow(self, elements: int, like: Tensor) -> Tensor:
        return like.new_empty(elements)

    def give_back(self, buffer: Tensor) -> None:
        pass
