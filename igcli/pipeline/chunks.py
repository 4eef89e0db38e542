"""Inputs cut into chunks: the inputs explained together, and what --resume reuses whole.

Past ``size`` items a chunk ends after an item whose name hashes to 0 modulo a quarter of the
window (content-defined chunking), so bounds follow the names rather than positions: after an input
is added or removed, the bounds fall back in step within a chunk or two and --resume finds the
other chunks whole. Why the window, the tail and the last pieces are sized as they are, with the
figures: docs/performance.md, "Chunks".
"""
from __future__ import annotations

import hashlib
from collections import deque
from itertools import islice
from typing import Iterable, Iterator, Protocol, TypeVar


class Named(Protocol):
    relpath: str


T = TypeVar("T", bound=Named)


def name_hash(relpath: str) -> int:
    """A well-mixed hash of an input's name, for chunk bounds (zlib.crc32, being linear, clusters
    over numbered names such as 00001.png, 00002.png)."""
    return int.from_bytes(hashlib.blake2b(relpath.encode("utf-8"), digest_size=8).digest(), "little")


def chunks(items: Iterable[T], size: int, in_flight: int = 1) -> Iterator[list[T]]:
    """Lists of ``size`` items and up to a window more (``size // 2``; a whole ``size`` below 16,
    to keep two names or more per bound), Failures riding along so that outputs keep the inputs'
    order. A chunk that finds no bound in its window (~2%) ends at its end.

    Where the inputs end fewer than ``size`` items after a bound, and the chunk before has room,
    those last items join it: a short last chunk would run the adaptive rule in part-filled batches.
    With several chunks in flight the last chunk comes in pieces (``last_pieces``). Which chunk is
    last depends on the inputs alone, so a resumed run cuts the same ones.
    """
    window = size // 2 if size >= 16 else size
    every, cap = max(1, window // 4), size + window
    source, read_back = iter(items), deque()
    chunk: list[T] = []
    while (item := read_back.popleft() if read_back else next(source, None)) is not None:
        chunk.append(item)
        boundary = len(chunk) >= size and name_hash(item.relpath) % every == 0
        if boundary or len(chunk) >= cap:
            short = min(size - 1, cap - len(chunk))  # a last chunk this short joins this one
            ahead = list(islice(source, short + 1))
            if len(ahead) <= short:
                yield from last_pieces(chunk + ahead, size, in_flight)
                return
            yield chunk
            chunk = []
            read_back.extend(ahead)
    yield from last_pieces(chunk, size, in_flight)


def last_pieces(chunk: list[T], size: int, in_flight: int) -> Iterator[list[T]]:
    """The last chunk: whole with one chunk in flight; else in pieces of at most half a chunk, and
    at least one per chunk in flight, so that the chunks in flight end together."""
    if in_flight <= 1:
        return pieces(chunk, 1)
    return pieces(chunk, max(in_flight, -(-2 * len(chunk) // max(1, size))))


def pieces(chunk: list[T], count: int) -> Iterator[list[T]]:
    """``chunk`` in ``count`` consecutive pieces (fewer if it has fewer items) whose sizes differ by
    one at most; none if it is empty."""
    count = min(max(1, count), len(chunk))
    first = 0
    for piece in range(count):
        end = first + len(chunk) // count + (piece < len(chunk) % count)
        yield chunk[first:end]
        first = end
