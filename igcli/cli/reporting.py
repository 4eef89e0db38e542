"""How an igcli error reaches the shell: one line on stderr, and its exit code."""
from __future__ import annotations

import functools
from typing import Any, Callable

import click

from igcli.errors import IgcliError


class CliError(click.ClickException):
    """An IgcliError shown as one line, with its exit code."""

    def __init__(self, error: IgcliError):
        super().__init__(str(error))
        self.exit_code = error.exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"igcli: error: {self.format_message()}", err=True)


def reporting_errors(command: Callable) -> Callable:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except IgcliError as error:
            raise CliError(error) from None
    return wrapper
