"""The SMS side of the channel protocol: what the courier hands an SMS adapter.

Like email, the courier never imports twilio: an adapter takes an :class:`SmsMessage`,
returns a :class:`~notify.channels.Receipt` whose reference is the provider's id for the
message (a Twilio Message SID), and raises :class:`~notify.channels.DeliveryError`
classified temporary or permanent, with the provider's error code in ``code``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from notify.channels import Receipt


@dataclass(frozen=True, slots=True)
class SmsMessage:
    to: str  # E.164
    body: str
    #: Where the provider reports delivery (our status webhook); None: do not report.
    status_callback: str | None = None


class SmsChannel(Protocol):
    name: str

    async def send(self, message: SmsMessage) -> Receipt: ...

    async def close(self) -> None: ...


def sms_channel(settings) -> SmsChannel:  # noqa: ANN001 - notify.settings.Settings
    """The configured SMS adapter. Call it inside the running event loop: the Twilio
    adapter opens an aiohttp session when it is built."""
    if settings.sms_transport == "twilio":
        from notify.channels.sms_twilio import TwilioSmsChannel

        return TwilioSmsChannel(settings)
    from notify.channels.sms_log import LogSmsChannel

    return LogSmsChannel(settings)
