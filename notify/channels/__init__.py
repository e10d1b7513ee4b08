"""Channels deliver messages. The sender and the pages depend on this small protocol only,
never on aiosmtplib or twilio: each adapter classifies its own failures as temporary or
permanent, and the caller decides what to do about them.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

from notify.errors import NotifyError


class DeliveryError(NotifyError):
    """A message was not delivered. ``temporary`` says whether trying again may work."""

    title = "Delivery failed"

    def __init__(self, detail: str, *, temporary: bool, response: str | None = None) -> None:
        super().__init__(detail)
        self.temporary = temporary
        self.response = response


@dataclass(frozen=True, slots=True)
class Receipt:
    channel: str
    reference: str  # the adapter's id for the message: a file name, a Message-ID, a SID


class EmailChannel(Protocol):
    name: str

    async def send(self, message: EmailMessage) -> Receipt: ...

    async def close(self) -> None: ...
