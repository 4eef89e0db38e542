"""Chunks in flight: explain the next chunk while the device still works on the current one.

On a CPU of several cores where torch runs the model, two chunks are in flight, each on half the
cores (intra-op threads) and half the configured batch, so the points in flight at once, and the
memory their activations take, stay what ``batch_size`` sets. The model's own throughput is about
the same either way; what gains is everything else a run does on the CPU between batches (the
adaptive rule's bookkeeping, decoding, records and PNGs), which runs while the other chunk computes.

On a GPU a second chunk's kernels could run through the first one's host work, each chunk on its
own CUDA stream, and that is faster; it stays off all the same, because two chunks in flight on a
GPU did not keep --resume's byte-for-byte promise (the kill -9 / --resume test of
tests/test_operations.py). Figures: docs/performance.md, "Chunks in flight".
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")
_thread_state = threading.local()


def chunks_in_flight(device: torch.device, runtime: str, asked: int | None = None) -> int:
    """Chunks explained at once: ``asked``, else two on a CPU of several cores where torch runs the
    model; one on CUDA until two keep --resume's bytes, and one on onnxruntime, whose runs share one
    pool of threads (see above)."""
    if asked is not None:
        return asked
    if device.type == "cpu" and runtime == "torch" and torch.get_num_threads() >= 2:
        return 2
    return 1


def points_per_chunk(batch_size: int, in_flight: int, device: torch.device) -> int:
    """Each chunk's batch: on the CPU, the chunks in flight share ``batch_size`` (see above)."""
    return max(1, batch_size // in_flight) if device.type == "cpu" else batch_size


@contextmanager
def threads_shared(in_flight: int, device: torch.device) -> Iterator[None]:
    """On the CPU, with several chunks in flight, torch's intra-op threads split among them for
    the block. Each thread that runs a chunk takes torch's count at its first parallel operation,
    so the block must start the threads (ordered_map does)."""
    if device.type != "cpu" or in_flight <= 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // in_flight))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ordered_map(work: Callable[[T], R], items: Iterable[T], in_flight: int) -> Iterator[tuple[T, R]]:
    """``(item, work(item))`` in the order of ``items``, up to ``in_flight`` works running at once
    in threads (1 or less: in line, no thread).

    One item more than ``in_flight`` is handed to the threads, so a thread that finishes before
    the oldest work still running starts the next at once instead of waiting for it.
    An exception in a work is raised at its item. Leaving the loop early starts no more works and
    waits for those already running, so none outlives the caller's resources.
    """
    if in_flight <= 1:
        for item in items:
            yield item, work(item)
        return
    pool = ThreadPoolExecutor(in_flight, "igcli-compute")
    pending: deque[tuple[T, Future]] = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(work, item)))
            if len(pending) > in_flight:
                head, future = pending.popleft()
                yield head, future.result()
        while pending:
            head, future = pending.popleft()
            yield head, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def own_stream(device: torch.device) -> Iterator[None]:
    """On CUDA, run the block on this thread's own stream, so that reading one chunk's results
    back waits for that chunk's kernels only, not for the other chunk's queued behind them."""
    if device.type != "cuda":
        yield
        return
    streams = _thread_state.__dict__.setdefault("streams", {})
    if device not in streams:
        streams[device] = torch.cuda.Stream(device)
    # Work queued before on the default stream (the model's weights folded and made channels-last
    # as it loaded) must finish before this stream reads what it wrote.
    streams[device].wait_stream(torch.cuda.default_stream(device))
    with torch.cuda.stream(streams[device]):
        yield
