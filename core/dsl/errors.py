"""Errors of a strategy text, each with the line and column where it was found."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem in a strategy: 1-based line and column, and a message written for the operator."""

    line: int
    column: int
    message: str

    def format(self, filename: str = "strategy.txt") -> str:
        """The compiler-style form editors understand: FILE:LINE:COL: error: MESSAGE."""
        return f"{filename}:{self.line}:{self.column}: error: {self.message}"


class StrategyError(Exception):
    """A strategy text that cannot be compiled.

    Carries every problem found in the text (`errors`, sorted by position). Caller: show them to the
    operator and keep running the last good policy; never run a text that raised this.
    """

    def __init__(self, errors: list[Diagnostic]):
        self.errors = sorted(errors)
        first = self.errors[0]
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(f"line {first.line}, column {first.column}: {first.message}{more}")

    @property
    def line(self) -> int:
        """Line of the first error."""
        return self.errors[0].line

    @property
    def column(self) -> int:
        """Column of the first error."""
        return self.errors[0].column
