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


class ReaderGone(IgcliError):
    """Every output was a stream whose reader closed it (``--jsonl - | head``): the run stops at
    once and quietly, 128 + SIGPIPE as a Unix tool killed by the broken pipe (docs/runs.md)."""

    exit_code = 141


class InputError(IgcliError):
    """One input cannot be read or used; the run goes on with the others."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, for one-line reports of library errors."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def root_cause(error: BaseException) -> str:
    """The deepest exception of the chain (``__cause__``, else ``__context__``), as one line:
    library errors often wrap the useful message under a generic first line."""
    seen, deepest = set(), error
    while id(deepest) not in seen:
        seen.add(id(deepest))
        nested = deepest.__cause__ or (None if deepest.__suppress_context__ else deepest.__context__)
        if nested is None:
            break
        deepest = nested
    return meaningful_line(deepest)


def meaningful_line(error: BaseException) -> str:
    """The first line of the message that says something: TorchScript interpreter errors open with
    'The following operation failed in the TorchScript interpreter.' and a traceback, and end with
    the real error on their last lines."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if "TorchScript interpreter" in lines[0]:
        errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
        if errors:
            return errors[-1]
    return lines[0]


# What a model's forward or backward raises on inputs it cannot take: one input's (or group's) failure, not the run's.
MODEL_FAILURES = (RuntimeError, ValueError, AssertionError, TypeError, IndexError)
