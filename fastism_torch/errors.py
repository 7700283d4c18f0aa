"""Errors and warnings that name a problem with the user's input."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, options or files: reported as one line, no traceback."""


class InputWarning(UserWarning):
    """Input that was read with a change the user should know about (bases zeroed, sequences skipped)."""


def first_line(e: BaseException) -> str:
    """``TypeName: first line of the message`` for one-line reports."""
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg.splitlines()[0]}" if msg else type(e).__name__
