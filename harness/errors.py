"""Errors that are the user's to fix: the CLI prints their message (no traceback) and exits 2."""

from __future__ import annotations

from pathlib import Path


class HarnessError(Exception):
    """A mistake in the user's input or environment, told as a sentence that says what to do."""

    exit_code = 2


class MatrixError(HarnessError):
    """A matrix file that cannot be used; the message starts with `file:line:` where known."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None):
        self.path = Path(path) if path is not None else None
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class UnknownOptimizerError(HarnessError):
    """A name that resolves to no optimizer in an installed package."""
