"""The ``igcli`` command: set up the process, then hand over to the command line (cli/commands.py)."""
from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["explain"]:  # the command that runs batches: see runtime/heap.py
        from igcli.runtime.heap import relaunch_with_malloc_tunables

        relaunch_with_malloc_tunables()
    from igcli.cli.commands import main as cli_main

    cli_main()
