"""Errors the workflow raises for bad input: each names the file/row/key and what to do."""

from __future__ import annotations

from typing import Iterable

#: How many offending rows/values an error message lists before "...".
MAX_LISTED = 10


def listed(values: Iterable, limit: int = MAX_LISTED) -> str:
    """Comma-separated preview of ``values`` for a message (at most ``limit``, then the count)."""
    values = [str(v) for v in values]
    text = ", ".join(values[:limit])
    return text + (f", ... ({len(values)} in all)" if len(values) > limit else "")


class InputError(ValueError):
    """Bad user input (table, slide, config). The message says where and how to fix it."""


class SlideError(InputError):
    """A slide cannot be used (unreadable, no MPP, no tissue...). Carries a short status code."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status
