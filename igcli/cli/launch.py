"""The ``igcli`` program: the command line (cli/commands.py) in a process of its own, which
``igcli explain`` may start again to set up malloc (runtime/heap.py)."""
from __future__ import annotations

import sys


def main() -> None:
    try:
        from igcli.cli.commands import main as commands
        from igcli.runtime.options import RuntimeOptions
    except KeyboardInterrupt:  # SIGINT while the command line's modules load: as later, one line and 130
        sys.stderr.write("igcli: interrupted\n")
        sys.exit(130)
    commands(obj=RuntimeOptions(malloc="restart"))
