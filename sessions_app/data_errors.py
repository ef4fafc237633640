"""Errors of search, export/import and retention (extensions of the one error vocabulary)."""

from __future__ import annotations

from spaces.errors import InvalidInput, StelloError
from spaces.paging import InvalidCursor  # one class per code: a search cursor is a cursor too

__all__ = ["ImportRefused", "ImportTooLarge", "InvalidCursor"]


class ImportRefused(InvalidInput):
    """An import file that cannot be taken as it is; nothing was imported."""

    code = "INVALID_IMPORT"
    default_message = "Invalid import"

    def __init__(self, message: str, *, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


class ImportTooLarge(StelloError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"
    default_message = "Import too large"
