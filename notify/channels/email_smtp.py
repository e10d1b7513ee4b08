"""The SMTP email channel (aiosmtplib): a pool of persistent connections to one relay.

Connections are reused across messages and dropped after any failure, so the next
message opens a fresh one. When the relay offers PIPELINING (RFC 2920; Postfix, Exim and
the big providers do), a message costs two round trips instead of four: MAIL, RCPT and
DATA go in one write, the content in the next (``_Pipelined``). The relay's replies are
classified here and nowhere else (django-anymail style): 4xx, timeouts and dropped
connections are temporary; 5xx are permanent. Retrying is not this module's business: the
postman owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections import deque

import aiosmtplib
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from aiosmtplib.response import SMTPResponse
from aiosmtplib.status import SMTPStatus

from notify.channels import DeliveryError, Envelope, Receipt
from notify.pace import Pace
from notify.settings import Settings

log = logging.getLogger(__name__)


class SmtpEmailChannel:
    name = "smtp"

    def __init__(self, settings: Settings, *, tls_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        if tls_context is None and settings.smtp_ca_file is not None:
            tls_context = ssl.create_default_context(cafile=str(settings.smtp_ca_file))
        self.tls_context = tls_context
        self._idle: list[aiosmtplib.SMTP | _Pipelined] = []
        self._slots = asyncio.Semaphore(settings.smtp_pool_size)
        self.concurrency = settings.smtp_pool_size
        # At most smtp_rate messages a second, on average and in any one second
        # (notify.pace); 0 means no limit.
        self._rate = Pace(settings.smtp_rate) if settings.smtp_rate else None

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

    async def _connection(self) -> aiosmtplib.SMTP | _Pipelined:
        while self._idle:
            connection = self._idle.pop()
            if connection.is_connected:
                return connection
            await _discard(connection)  # closed by the relay, or not to be trusted
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
        except BaseException as exc:
            # Cancelled too (a worker stopping): the socket is not left open.
            await _discard(connection)
            if isinstance(exc, Exception):
                raise _classify(exc) from exc
            raise
        if connection.supports_extension("pipelining") and connection.transport is not None:
            return _Pipelined(connection, s.smtp_timeout)
        return connection

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(Exception):
                await connection.quit()
            await _discard(connection)


class _Pipelined(asyncio.Protocol):
    """A connection to a relay that offers PIPELINING (RFC 2920), after aiosmtplib opened
    it (greeting, EHLO, STARTTLS, AUTH): its transport is handed over to this protocol,
    which sends MAIL, every RCPT and DATA in one write and reads their replies in order,
    then the content and its reply. Two round trips a message instead of four.

    Why not aiosmtplib for this too: it has no PIPELINING. Its protocol expects one reply
    per command written and drops what arrives beyond it, so pipelined replies would be
    lost. Each round trip cost the campaign worker a wake-up, a future, a timer and two
    system calls (~0.1 ms a message of the worker and the relay, bench/campaign_send.py).
    What is ours is the reply reader below (RFC 5321 §4.2: three digits, then "-" on every
    line but the last) and the order of the transaction; everything before it stays
    aiosmtplib's, and a relay without PIPELINING gets aiosmtplib's own transaction.
    """

    #: A reply longer than this is an error (aiosmtplib's MAX_RESPONSE_LENGTH is 10 KB).
    MAX_REPLY = 65536

    def __init__(self, connection: aiosmtplib.SMTP, timeout: float) -> None:
        self.smtp = connection
        self.timeout = timeout
        self.transport: asyncio.Transport = connection.transport  # type: ignore[assignment]
        self._buffer = bytearray()
        self._waiting: deque[asyncio.Future[SMTPResponse]] = deque()
        self._lost = False
        self.extensions = connection.esmtp_extensions
        self.transport.set_protocol(self)

    @property
    def is_connected(self) -> bool:
        # Bytes nobody asked for (the start of a 421 before an idle hang-up, say) would be
        # read as the next MAIL's reply: such a connection is not used again.
        return not self._lost and not self._buffer and not self.transport.is_closing()

    def supports_extension(self, name: str) -> bool:
        return name.lower() in self.extensions

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while self._waiting and (reply := self._reply()) is not None:
                waiter = self._waiting.popleft()
                if not waiter.done():
                    waiter.set_result(reply)
        except aiosmtplib.SMTPException as exc:
            self._fail(exc)
            return
        if len(self._buffer) > self.MAX_REPLY or (self._buffer and not self._waiting
                                                 and b"\n" in self._buffer):
            # A reply nobody asked for (a 421 before the relay hangs up) or an endless
            # one: this connection is done.
            self._fail(aiosmtplib.SMTPServerDisconnected("unexpected reply from the relay: "
                                                         + self._buffer[:200].decode(
                                                             "utf-8", "replace").strip()))

    def _reply(self) -> SMTPResponse | None:
        lines, offset = [], 0
        while (end := self._buffer.find(b"\n", offset)) != -1:
            line = bytes(self._buffer[offset:end + 1])
            offset = end + 1
            if not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                # Not SMTP: no reply code to report, the connection is done.
                raise aiosmtplib.SMTPException("malformed reply from the relay: "
                                               + line.decode("utf-8", "replace").strip())
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                del self._buffer[:offset]
                return SMTPResponse(int(line[:3]),
                                    b"\n".join(lines).decode("utf-8", "surrogateescape"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(aiosmtplib.SMTPServerDisconnected(f"connection lost: {exc}" if exc
                                                     else "the relay closed the connection"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost fails what waits

    def _fail(self, exc: Exception) -> None:
        self._lost = True
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(exc)
                waiter.exception()  # retrieved: nobody may await it any more
        self.transport.close()

    def _expect(self, count: int) -> list[asyncio.Future[SMTPResponse]]:
        """Waiters for the replies to the ``count`` commands just written, in order."""
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in range(count)]
        self._waiting.extend(waiters)
        return waiters

    async def _reply_to(self, waiter: asyncio.Future[SMTPResponse]) -> SMTPResponse:
        """One reply, within the timeout (per reply, as aiosmtplib and RFC 5321 §4.5.3.2
        count it: a relay that takes its time over each recipient is not cut short)."""
        try:
            async with asyncio.timeout(self.timeout):
                return await waiter
        except TimeoutError:
            self._fail(aiosmtplib.SMTPReadTimeoutError("timed out waiting for the relay"))
            raise aiosmtplib.SMTPReadTimeoutError("timed out waiting for the relay") from None

    def _write(self, data: bytes) -> None:
        if not self.is_connected:
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        self.transport.write(data)

    async def transaction(self, envelope: Envelope, sender: bytes, recipients: list[bytes],
                          options: list[bytes], content: bytes) -> str:
        commands = [b" ".join([b"MAIL FROM:" + sender, *options])]
        commands += [b"RCPT TO:" + quoted for quoted in recipients]
        self._write(b"\r\n".join([*commands, b"DATA", b""]))
        mail, *rcpts, data = self._expect(len(commands) + 1)
        # Each reply is read, and acted on, in order: a refusal counts even when the relay
        # then hangs up or stalls before answering the rest (the waiters left behind are
        # failed with the connection, which send discards).
        _check_sender(await self._reply_to(mail), envelope)
        refused = [refusal for waiter, address in zip(rcpts, envelope.rcpt_to, strict=True)
                   if (refusal := _refusal(await self._reply_to(waiter), address))]
        if len(refused) == len(recipients):
            # The relay refuses DATA too (RFC 2920 §3.1); should it accept it anyway, the
            # connection is dropped (send) before any content, so nothing is delivered.
            raise aiosmtplib.SMTPRecipientsRefused(refused)
        reply = await self._reply_to(data)
        if reply.code != SMTPStatus.start_input:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        self._write(_stuffed(content))
        [done] = self._expect(1)
        reply = await self._reply_to(done)
        if reply.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        return reply.message

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            self._write(b"QUIT\r\n")
            await self._reply_to(self._expect(1)[0])

    def close(self) -> None:
        self._lost = True
        self.transport.close()
        self.smtp.close()  # aiosmtplib's side of it: its state and lock, nothing to send


def _crlf(data: bytes) -> bytes:
    """The message with CRLF line ends and a CRLF at its end, as DATA carries it
    (aiosmtplib's own function), skipped when three counts say it already is so
    (build_bytes's messages are)."""
    if (data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")
            and data.endswith(b"\r\n")):
        return data
    return normalize_message_line_endings(data)


def _stuffed(content: bytes) -> bytes:
    """CRLF content as DATA sends it: lines that start with a dot doubled (RFC 5321
    §4.5.2, aiosmtplib's pattern), then the lone dot."""
    if content.startswith(b".") or b"\n." in content:
        content = PERIOD_REGEX.sub(b"..", content)
    return content + b".\r\n"


async def _transaction(connection: aiosmtplib.SMTP | _Pipelined, envelope: Envelope,
                       sender: bytes, recipients: list[bytes]) -> str:
    """One mail transaction (MAIL, RCPT, DATA): what aiosmtplib's ``sendmail`` does, less
    its parsing of every address with ``email.utils.parseaddr``, twice per address (to
    validate, then to quote). With a VERP sender that parsing was a third of a campaign
    message's SMTP cost (bench/campaign_send.py). Our addresses are bare mailboxes: the
    VERP sender is ours and recipients were validated when stored; what could break the
    command line is refused before (``_mailbox``), as aiosmtplib refuses it. The
    connection is discarded after any error (``send``), so no RSET is needed.
    """
    data = _crlf(envelope.data)
    # RFC 1870: the size as sent, without the dots SMTP adds.
    options = [b"SIZE=%d" % len(data)] if connection.supports_extension("size") else []
    if isinstance(connection, _Pipelined):
        return await connection.transaction(envelope, sender, recipients, options, data)
    _check_sender(await connection.execute_command(b"MAIL", b"FROM:" + sender, *options),
                  envelope)
    refused = [refusal for address, quoted in zip(envelope.rcpt_to, recipients, strict=True)
               if (refusal := _refusal(await connection.execute_command(b"RCPT", b"TO:" + quoted),
                                       address))]
    if len(refused) == len(recipients):
        raise aiosmtplib.SMTPRecipientsRefused(refused)
    return (await connection.data(data)).message


def _check_sender(reply: SMTPResponse, envelope: Envelope) -> None:
    if reply.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, envelope.mail_from)


def _refusal(reply: SMTPResponse, address: str) -> aiosmtplib.SMTPRecipientRefused | None:
    """The error of a refused RCPT; None when the relay took the recipient."""
    if reply.code in (SMTPStatus.completed, SMTPStatus.will_forward):
        return None
    return aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, address)


def _mailbox(address: str) -> bytes:
    """``<address>`` for MAIL or RCPT; _BadAddress for what no command line may carry."""
    if not address.isascii() or not address.isprintable() or _UNSAFE.search(address):
        raise _BadAddress(f"address {address!r} cannot be sent on an SMTP command line")
    return f"<{address}>".encode("ascii")


class _BadAddress(ValueError):
    """An address refused before any command."""


#: What aiosmtplib refuses in a mailbox too (its ADDRESS_INJECTION_REGEX).
_UNSAFE = re.compile(r'[\s<>"]')


async def _discard(connection: aiosmtplib.SMTP | _Pipelined) -> None:
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
