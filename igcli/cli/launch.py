"""The ``igcli`` program: the command line (cli/commands.py) in a process of its own, which
``igcli explain`` may start again to set up malloc (runtime/heap.py)."""
from __future__ import annotations


def main() -> None:
    from igcli.cli.commands import main as commands
    from igcli.runtime.options import RuntimeOptions

    commands(obj=RuntimeOptions(malloc="restart"))
