"""Typed exceptions.

Every error a user can cause derives from :class:`LlmcError`; the CLI prints its message on one line
and exits non-zero, with no traceback. Messages say what went wrong *and* what to do about it.
"""

from __future__ import annotations


class LlmcError(Exception):
    """Base of all user-facing errors (bad input, unsupported features, missing tools)."""

    exit_code = 2


class ModelLoadError(LlmcError):
    """A model directory, checkpoint or config cannot be loaded (names the file and the problem)."""


class UnsupportedOpError(LlmcError):
    """The frontend or a backend meets an op it cannot map (names the op and the module scope)."""


class IRError(LlmcError):
    """Malformed IR: a verifier failure, a bad attribute, a type mismatch, a parse error."""


class VerifyError(IRError):
    """The verifier found a broken invariant; ``errors`` lists every finding."""

    def __init__(self, errors: list[str], context: str = "") -> None:
        self.errors = list(errors)
        head = f"{context}: " if context else ""
        shown = "; ".join(self.errors[:5])
        more = f" (+{len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
        super().__init__(f"{head}IR verification failed: {shown}{more}")


class ParseError(IRError):
    """The IR text could not be parsed; the message names line and column."""


class TargetError(LlmcError):
    """Unknown target, or a target that cannot build here."""


class PassError(LlmcError):
    """A pass failed, or was given impossible options."""


class InputError(LlmcError):
    """Inputs given to a compiled module do not match its signature (names the input and why)."""
