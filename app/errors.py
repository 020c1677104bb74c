"""Errors that carry a user-facing message.

Every refusal the studio gives a person or a script goes through :class:`StudioError`, so the
JSON API, the HTML page and the gateway can render the same code and words with the right status.
"""

from __future__ import annotations


class StudioError(Exception):
    """A refusal with a stable machine code, a plain-words message and an HTTP status."""

    status_code: int = 400

    def __init__(self, code: str, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class InputError(StudioError):
    """Bad input from the client: which file or field, and which limit it breaks."""

    status_code = 400


class NotFound(StudioError):
    """The thing does not exist, or is not the caller's (the two are never told apart)."""

    status_code = 404

    def __init__(self, message: str = "No such job.") -> None:
        super().__init__("not_found", message, 404)
