"""Domain errors. HTTP statuses for them are chosen in one table in ``notify.web.problems``.

Configuration errors (:class:`notify.settings.ConfigError`) are deliberately outside this
tree: they stop start-up, they are never answered to a client.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FieldError:
    """One problem with one part of the input; ``field`` is a dotted path like ``body.email``."""

    field: str
    message: str


class NotifyError(Exception):
    """Base of every error the service reports to a caller."""

    title = "Request failed"

    def __init__(self, detail: str, *, field: str | None = None,
                 errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or ([FieldError(field, detail)] if field else [])


class InvalidRequest(NotifyError):
    """The input is well-formed but breaks a rule (unknown topic, bad source, ...)."""

    title = "Invalid request"


class NotFound(NotifyError):
    title = "Not found"


class Conflict(NotifyError):
    """The request clashes with stored data (an address that belongs to another user)."""

    title = "Conflict"

