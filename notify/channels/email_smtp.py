"""The SMTP email channel (aiosmtplib): a pool of persistent connections to one relay.

Connections are reused across messages and dropped after any failure, so the next
message opens a fresh one. The relay's replies are classified here and nowhere else
(django-anymail style): 4xx, timeouts and dropped connections are temporary; 5xx are
permanent. Retrying is not this module's business: the postman owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl

import aiosmtplib
from aiolimiter import AsyncLimiter
from aiosmtplib.status import SMTPStatus

from notify.channels import DeliveryError, Envelope, Receipt
from notify.settings import Settings

log = logging.getLogger(__name__)


class SmtpEmailChannel:
    name = "smtp"

    def __init__(self, settings: Settings, *, tls_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        if tls_context is None and settings.smtp_ca_file is not None:
            tls_context = ssl.create_default_context(cafile=str(settings.smtp_ca_file))
        self.tls_context = tls_context
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(settings.smtp_pool_size)
        # At most smtp_rate messages a second (a leaky bucket); 0 means no limit.
        rate = settings.smtp_rate
        self._rate = AsyncLimiter(rate, 1) if rate else None

    async def send(self, envelope: Envelope) -> Receipt:
        try:
            # Before taking a connection or a place under the rate: a refused address
            # must not cost either.
            sender = _mailbox(envelope.mail_from)
            recipients = [_mailbox(address) for address in envelope.rcpt_to]
        except _BadAddress as exc:
            # Sending it again cannot succeed.
            raise DeliveryError(str(exc), temporary=False) from exc
        async with self._slots:
            if self._rate is not None:
                await self._rate.acquire()
            connection = await self._connection()
            try:
                reply = await _transaction(connection, envelope, sender, recipients)
            except BaseException as exc:
                await _discard(connection)
                if isinstance(exc, Exception):
                    raise _classify(exc) from exc
                raise
            self._idle.append(connection)
            return Receipt(self.name, reply.strip()[:255])

    async def _connection(self) -> aiosmtplib.SMTP:
        while self._idle:
            connection = self._idle.pop()
            if connection.is_connected:
                return connection
        s = self.settings
        connection = aiosmtplib.SMTP(
            hostname=s.smtp_host, port=s.smtp_port, timeout=s.smtp_timeout,
            use_tls=s.smtp_tls == "implicit", start_tls=s.smtp_tls == "starttls",
            tls_context=self.tls_context,
        )
        try:
            await connection.connect()
            if connection.is_ehlo_or_helo_needed:
                try:
                    await connection.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await connection.helo()
            if s.smtp_username:
                await connection.login(s.smtp_username, s.smtp_password)
        except Exception as exc:
            await _discard(connection)
            raise _classify(exc) from exc
        return connection

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(Exception):
                await connection.quit()
            await _discard(connection)


async def _transaction(connection: aiosmtplib.SMTP, envelope: Envelope, sender: bytes,
                       recipients: list[bytes]) -> str:
    """One mail transaction (MAIL, RCPT, DATA): what aiosmtplib's ``sendmail`` does, less
    its parsing of every address with ``email.utils.parseaddr``, twice per address (to
    validate, then to quote). With a VERP sender that parsing was a third of a campaign
    message's SMTP cost (bench/campaign_send.py). Our addresses are bare mailboxes: the
    VERP sender is ours and recipients were validated when stored; what could break the
    command line is refused before (``_mailbox``), as aiosmtplib refuses it. The
    connection is discarded after any error (``send``), so no RSET is needed.
    """
    data = envelope.data
    options = []
    if connection.supports_extension("size"):
        # RFC 1870: the size as sent, line ends as CRLF (ours already are).
        size = len(data) + data.count(b"\n") - data.count(b"\r\n")
        options.append(b"SIZE=%d" % size)
    reply = await connection.execute_command(b"MAIL", b"FROM:" + sender, *options)
    if reply.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, envelope.mail_from)
    refused = []
    for address, quoted in zip(envelope.rcpt_to, recipients, strict=True):
        reply = await connection.execute_command(b"RCPT", b"TO:" + quoted)
        if reply.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
            refused.append(aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, address))
    if len(refused) == len(recipients):
        raise aiosmtplib.SMTPRecipientsRefused(refused)
    return (await connection.data(data)).message


def _mailbox(address: str) -> bytes:
    """``<address>`` for MAIL or RCPT; _BadAddress for what no command line may carry."""
    if not address.isascii() or not address.isprintable() or _UNSAFE.search(address):
        raise _BadAddress(f"address {address!r} cannot be sent on an SMTP command line")
    return f"<{address}>".encode("ascii")


class _BadAddress(ValueError):
    """An address refused before any command."""


#: What aiosmtplib refuses in a mailbox too (its ADDRESS_INJECTION_REGEX).
_UNSAFE = re.compile(r'[\s<>"]')


async def _discard(connection: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        connection.close()


def _classify(exc: Exception) -> DeliveryError:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return DeliveryError(f"{exc.code} {exc.message}".strip(), temporary=exc.code < 500,
                             code=exc.code, status=_enhanced(exc.message), recipient=True)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # Wrong credentials are our configuration, not the recipient: keep the message and
        # retry, so nothing is lost while an operator fixes the settings.
        return DeliveryError(f"SMTP authentication failed: {exc.code} {exc.message}",
                             temporary=True, code=exc.code)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        status = _enhanced(exc.message)
        return DeliveryError(f"{exc.code} {exc.message}".strip(), temporary=exc.code < 500,
                             code=exc.code, status=status)
    if isinstance(exc, (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError, ssl.SSLError)):
        return DeliveryError(f"connection to the relay failed: {exc or type(exc).__name__}",
                             temporary=True)
    return DeliveryError(f"unexpected SMTP error: {exc!r}", temporary=True)


def _enhanced(message: str) -> str | None:
    """The RFC 3463 enhanced status code at the start of a reply text, like 5.1.1."""
    first = message.strip().split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] in "245":
        return first
    return None
