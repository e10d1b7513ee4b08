"""The Twilio SMS channel: the ``twilio`` library's async client (aiohttp underneath).

Failures are classified here and nowhere else (django-anymail style): HTTP 429, 5xx,
timeouts and connection errors are temporary; every other 4xx is permanent, among them
21610 (the recipient replied STOP to our sender), 21211 (not a valid number) and 21614
(not a mobile number), which the courier also acts on. Retrying is the courier's business.

The REST base URL is ``settings.twilio_api_base``, so tests and staging drive the real
library against a local stand-in of Twilio's API.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from twilio.base.exceptions import TwilioException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from notify.channels import DeliveryError, Receipt
from notify.channels.sms import SmsMessage
from notify.sms import redact

log = logging.getLogger(__name__)

#: Seconds one request to Twilio may take before it counts as a temporary failure.
TIMEOUT = 30.0


class TwilioSmsChannel:
    name = "twilio"

    def __init__(self, settings, *, timeout: float = TIMEOUT) -> None:  # noqa: ANN001
        # The async HTTP client opens an aiohttp session at once, and aiohttp refuses to
        # do that outside a running loop: build this channel in the app's cleanup_ctx or
        # the worker's coroutine, never at import time.
        asyncio.get_running_loop()
        self.settings = settings
        self.timeout = timeout
        # The library logs every request and response at INFO (URL, headers): one line of
        # ours per message is enough, so its chatter is kept to warnings.
        http_log = logging.getLogger("notify.twilio.http")
        http_log.setLevel(logging.WARNING)
        self._http = AsyncTwilioHttpClient(logger=http_log)
        self._client = Client(settings.twilio_account_sid, settings.twilio_auth_token,
                              http_client=self._http)
        self._client.api.base_url = settings.twilio_api_base

    async def send(self, message: SmsMessage) -> Receipt:
        s = self.settings
        sender = ({"messaging_service_sid": s.twilio_messaging_service_sid}
                  if s.twilio_messaging_service_sid else {"from_": s.twilio_from})
        extra = {"status_callback": message.status_callback} if message.status_callback else {}
        try:
            async with asyncio.timeout(self.timeout):
                created = await self._client.messages.create_async(
                    to=message.to, body=message.body, **sender, **extra)
        except TwilioException as exc:
            raise classify(exc) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DeliveryError(f"connection to Twilio failed: {exc or type(exc).__name__}",
                                temporary=True) from None
        if not created.sid:
            raise DeliveryError("Twilio accepted the message but named no SID", temporary=True)
        return Receipt(self.name, created.sid)

    async def close(self) -> None:
        await self._http.close()


def classify(exc: TwilioException) -> DeliveryError:
    """A Twilio error reply as a :class:`DeliveryError`; ``code`` is Twilio's error code."""
    status = getattr(exc, "status", None)
    code = getattr(exc, "code", None)
    words = getattr(exc, "msg", None) or getattr(exc, "detail", None) or type(exc).__name__
    temporary = status is None or status == 429 or status >= 500
    # Twilio's messages quote the number ("The 'To' number +1... is not valid"): the
    # detail goes to logs and the outbox, so numbers in it are masked.
    detail = redact(f"Twilio {status} error {code}: {words}")[:500]
    return DeliveryError(detail, temporary=temporary,
                         code=code if isinstance(code, int) else None,
                         status=str(status) if status else None,
                         recipient=code in (21610, 21211, 21614))
