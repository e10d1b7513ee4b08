"""Channels deliver messages. The sender and the pages depend on this small protocol only,
never on aiosmtplib or twilio: each adapter classifies its own failures as temporary or
permanent, and the caller decides what to do about them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from notify.errors import NotifyError


class DeliveryError(NotifyError):
    """A message was not delivered. ``temporary`` says whether trying again may work;
    ``code`` and ``status`` carry the relay's reply (550, "5.1.1") when there was one."""

    title = "Delivery failed"

    def __init__(self, detail: str, *, temporary: bool, code: int | None = None,
                 status: str | None = None, recipient: bool = False) -> None:
        super().__init__(detail)
        self.temporary = temporary
        self.code = code
        self.status = status
        self.recipient = recipient  # the refusal was of the recipient (RCPT), not of us

    @property
    def is_unknown_address(self) -> bool:
        """RFC 3463: the recipient's mailbox does not exist or its address is bad, for good.

        Only a refusal of the recipient counts; a relay refusing our sender (5.1.8) or the
        message must never suppress the people we write to."""
        return (not self.temporary and self.recipient
                and self.status in ("5.1.1", "5.1.2", "5.1.3", "5.1.10"))


@dataclass(frozen=True, slots=True)
class Envelope:
    """What goes over SMTP: the envelope sender (our VERP address), the recipients, and
    the message bytes exactly as sent, DKIM signature included."""

    mail_from: str
    rcpt_to: tuple[str, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class Receipt:
    channel: str
    reference: str  # the adapter's id for the message: a file name, a Message-ID, a SID


class EmailChannel(Protocol):
    name: str
    #: How many sends of one batch the postman runs at once (its SMTP pool, say).
    concurrency: int

    async def send(self, envelope: Envelope) -> Receipt: ...

    async def close(self) -> None: ...
