"""SIGINT and SIGTERM during a run: the first finishes the inputs in flight, a second stops at once."""
from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("igcli")


class StopNow(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: stop at once; the exit code is 128 + ``signum``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequest:
    """The first SIGINT/SIGTERM asks the run to stop after the inputs in flight; a second stops it now."""

    def __init__(self):
        self.signum: int | None = None

    def __call__(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise StopNow(signum)
        self.signum = signum
        log.warning("%s: finishing the inputs in flight, then stopping (send it again to stop at once)",
                    signal.Signals(signum).name)


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # only the main thread may set handlers; embedding callers keep theirs
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
