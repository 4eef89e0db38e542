"""Errors that are part of igcli's interface: each carries one line a user can act on.

The CLI maps them to exit codes; everything below the CLI raises them and never exits.
"""
from __future__ import annotations

import re


class IgcliError(Exception):
    """Base class; ``str(error)`` is the one line shown to the user."""

    exit_code = 1


class ConfigError(IgcliError):
    """The configuration (file, --set, flags) is invalid. Nothing has run."""

    exit_code = 2


class UsageError(IgcliError):
    """The command line names no usable inputs or outputs. Nothing has run."""

    exit_code = 2


class ModelError(IgcliError):
    """The model cannot be loaded, or cannot run on inputs shaped as configured."""

    exit_code = 3


class InputError(IgcliError):
    """One input cannot be read or used; the run goes on with the others."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, for one-line reports of library errors."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    return lines[0] if lines else type(error).__name__
