"""How an igcli error reaches the shell: one line on stderr, and its exit code."""
from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Callable

import click

from igcli.errors import IgcliError, ReaderGone, UsageError


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
        except ReaderGone as error:  # stdout's reader has all it wants: no error line (docs/runs.md)
            raise click.exceptions.Exit(error.exit_code) from None
        except IgcliError as error:
            raise CliError(error) from None
    return wrapper


def warnings_on_stderr() -> None:
    """Show igcli's warnings as explain does ("igcli: WARNING: ..."), for a command without -q/-v."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("igcli: %(levelname)s: %(message)s"))
    logger = logging.getLogger("igcli")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING)
    logger.propagate = False


class OneLineUsage(click.Group):
    """A group whose commands report click's usage errors (a bad option value, an unknown option,
    a missing argument) as one ``igcli: error:`` line, exit 2, like every other igcli error."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as error:
            raise _one_line(error) from None
        except KeyboardInterrupt as error:
            raise interrupted(error) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            raise _one_line(error) from None
        except KeyboardInterrupt as error:  # before a run's own handler (importing torch, loading the model): not "Aborted!"
            raise interrupted(error) from None


def interrupted(error: KeyboardInterrupt) -> click.exceptions.Exit:
    """The exit of a signal that lands where no handler of igcli's stops the run: one line and
    128 + the signal (130 for SIGINT; a StopNow carries its own)."""
    click.echo("igcli: interrupted", err=True)
    return click.exceptions.Exit(128 + getattr(error, "signum", 2))


def _one_line(error: click.UsageError) -> CliError:
    if type(error) is click.BadParameter and (error.param_hint is not None or error.param is not None):
        hint = error.param_hint if error.param_hint is not None else error.param.get_error_hint(error.ctx)
        names = hint if isinstance(hint, str) else " / ".join(hint)
        line = f"{names.replace(chr(39), '')}: {error.message}"
    else:
        where = f"; see '{error.ctx.command_path} --help'" if error.ctx is not None else ""
        line = error.format_message().rstrip(".") + where
    return CliError(UsageError(line))
