"""Errors and warnings that name a problem with the user's input or model (ground floor: imports nothing of
the package, so every module can raise them)."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, options or files: reported as one line, no traceback."""


class InputWarning(UserWarning):
    """Input that was read with a change the user should know about (bases zeroed, sequences skipped)."""


class ISMUndefinedError(ValueError):
    """The model's prediction for one sequence depends on the other sequences of its batch (e.g. BatchNorm
    with batch statistics in eval mode): no ISM, fast or naive, is defined for it."""


class UnsupportedOpWarning(UserWarning):
    """An op without a change-range rule (or with unsupported settings) became a stop point: ``node`` (its fx
    node's name) and ``reason`` (the rule's) when raised by the analysis."""

    def __init__(self, message: str, node: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.node, self.reason = node, reason


def first_line(e: BaseException) -> str:
    """``TypeName: first line of the message`` for one-line reports."""
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg.splitlines()[0]}" if msg else type(e).__name__
