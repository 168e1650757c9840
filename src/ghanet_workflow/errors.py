"""Errors the workflow raises for bad input: each names the file/row/key and what to do."""


class InputError(ValueError):
    """Bad user input (table, slide, config). The message says where and how to fix it."""


class SlideError(InputError):
    """A slide cannot be used (unreadable, no MPP, no tissue...). Carries a short status code."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status
