"""Errors raised on bad input data."""

from __future__ import annotations


class BadInputError(ValueError):
    """An input file or record is unusable; the message names it and says what was expected.

    Attributes:
        source: The file (or record) at fault.
        reason: What is wrong with it.
    """

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = str(source)
        self.reason = reason
