"""Record streams whose reader went away (``--jsonl - | head -n 1``): dropped quietly, as Unix
tools do, instead of failing the run (docs/runs.md)."""
from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

log = logging.getLogger("igcli")


def drop_closed_stream(stream: TextIO) -> None:
    """Forget ``stream`` after a broken pipe. Where it is the process's stdout, its descriptor
    is pointed at /dev/null, so that a later write and the interpreter's last flush of what is
    still buffered do not fail again; another stream (a FIFO given to --jsonl) is closed."""
    log.debug("%s: its reader closed it; no more records go there", getattr(stream, "name", "a stream"))
    if stream is sys.stdout or stream is sys.__stdout__:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no descriptor (a test's captured stdout)
            pass
        return
    try:
        stream.close()
    except OSError:  # what it still buffered cannot go anywhere
        pass
