"""Read ahead: decode the next inputs in a thread while the model works on the current ones.

Decoding (Pillow, tokenizers) releases the GIL for most of its time, so on a machine with cores to
spare it overlaps the forward/backward passes; on 2 cores torch already keeps both busy and a
reader thread only competes with it, so there inputs are read in line (see ``read_ahead``).
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


def read_ahead(chunk_size: int, asked: int | None = None) -> int:
    """Items to decode ahead of the consumer: ``asked``, else two chunks with more than 2 cores and none on 2."""
    if asked is not None:
        return asked
    return 2 * chunk_size if (os.cpu_count() or 1) > 2 else 0


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """``items`` in order, produced up to ``depth`` ahead by a background thread (0: in line).

    An exception in the producer is raised here, at the item where it happened. Leaving the loop
    early (a signal, --max-errors) stops the producer at its next item.
    """
    if depth <= 0:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put((item, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            buffer.put((_DONE, error))
            return
        buffer.put((_DONE, None))

    thread = threading.Thread(target=produce, name="igcli-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                buffer.get(timeout=0.05)
            except queue.Empty:
                pass
