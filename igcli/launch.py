"""The ``igcli`` command: set up the process, then hand over to the command line (cli.py)."""
from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["explain"]:  # the command that runs batches: see heap.py
        from .heap import relaunch_with_malloc_tunables

        relaunch_with_malloc_tunables()
    from .cli import main as cli_main

    cli_main()
