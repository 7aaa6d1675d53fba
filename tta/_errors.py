"""Helpers for error messages that name the bad value and what would be valid."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TTAError(ValueError):
    """A user error: a bad config key, option, data file, path or model.

    Its message names the culprit and what would be valid. The ``tta`` command line prints it on
    one line; any other exception is a bug in tta and shows its traceback.
    """


class TTATypeError(TTAError, TypeError):
    """A user error about a value's type (an option given as text where a number is expected)."""


class TTAFileNotFoundError(TTAError, FileNotFoundError):
    """A file or folder the user named does not exist."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return " Did you mean 'x'?" for the closest valid choice, or "" when none is close."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> str:
    """Message for an unknown name: the bad value, the closest match and every valid one."""
    choices = list(choices)
    return (
        f"unknown {kind} {name!r}.{did_you_mean(name, choices)} "
        f"Valid: {', '.join(repr(c) for c in choices)}."
    )
