"""``notify inbound``: the SMTP listener for what comes back after we send.

Three kinds of mail arrive, all at addresses whose local part carries a signed token that
names one delivery (``notify.tokens.address_token``):

* Bounces, to the VERP Return-Path ``bounces+TOKEN@mail_domain``. Most are DSNs
  (``multipart/report; report-type=delivery-status``, RFC 3464): their per-recipient
  ``Action`` and ``Status`` fields say hard or soft; flufl.bounce reads the reported
  addresses and recognises the older non-standard bounce formats too. A bounce counts
  against the address the delivery went to, never against one the report names.
* Spam complaints: ARF reports (``multipart/report; report-type=feedback-report``, RFC
  5965) from a provider's feedback loop. The original message inside names the delivery by
  its Message-ID, Return-Path or List-Unsubscribe mailto address.
* Unsubscribe requests: any other mail to ``unsubscribe+TOKEN@mail_domain``, the mailto
  half of every List-Unsubscribe header (RFC 2369).

RCPT TO any other address, or with a token that does not verify, is refused with 550:
this is not a mail server for people. A message we cannot read is accepted (250) and
logged, never refused: a refused DSN would only produce another DSN. Only a database
outage answers 451, so the sender keeps the message and tries again later. Whatever a
message asks is recorded by ``notify.bounces``; recording twice changes nothing more than
recording once, so a retried message is harmless.

The server runs on the process's own event loop (not aiosmtpd's threaded Controller), so
the handlers share the database connections that ``notify.cli.run_db`` opened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import logging
import re
import signal
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.utils import parseaddr
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from flufl.bounce import all_failures

from notify import __version__, bounces
from notify.db import is_unavailable
from notify.models import Delivery, User
from notify.settings import Settings
from notify.tokens import AddressPurpose

log = logging.getLogger(__name__)

#: DSNs and ARF reports may carry the whole original message; ours are small.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
#: How long stopping waits for messages being processed before it closes connections.
STOP_GRACE_SECONDS = 10.0

OK = "250 2.0.0 OK"
NO_SUCH_USER = "550 5.1.1 no such user"
TRY_AGAIN = "451 4.3.0 temporary failure, try again later"

PREFIXES = {"bounces": AddressPurpose.BOUNCE, "unsubscribe": AddressPurpose.UNSUBSCRIBE}
#: ARF feedback types that are a person's complaint. "auth-failure" (RFC 6591) and
#: "not-spam" are not; "virus" and "other" say nothing about the recipient's wishes.
COMPLAINT_TYPES = frozenset({"abuse", "fraud"})
#: 5.x.x statuses (RFC 3463) that blame the message or the sender, not the address: a full
#: mailbox, a message too big, content or policy refusals (spam filters, DMARC). Counted
#: as soft bounces, or one misconfigured DNS record would suppress every address at a
#: provider at once.
SOFT_PERMANENT = re.compile(r"^5\.(2\.2|2\.3|3\.4|6\.\d+|7\.\d+)$")
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


@dataclass(frozen=True, slots=True)
class Route:
    """What an accepted recipient address stands for."""

    purpose: AddressPurpose
    delivery_id: int


def route(settings: Settings, address: str) -> Route | None:
    """The route of ``bounces+TOKEN@`` or ``unsubscribe+TOKEN@`` with a valid token."""
    local = address.strip().strip("<>").rpartition("@")[0]
    prefix = local.partition("+")[0].lower()
    purpose = PREFIXES.get(prefix)
    if purpose is None:
        return None
    found = bounces.delivery_id_of(settings, address, prefix, purpose)
    return None if found is None else Route(purpose, found)


# --- Reading messages -----------------------------------------------------------------


def parse(data: bytes) -> Message:
    # compat32: the lenient parser flufl.bounce is written for; it records defects rather
    # than raising on broken input.
    return email.message_from_bytes(data, policy=email.policy.compat32)


def _text(value: Any) -> str:
    return " ".join(str(value or "").split())


def report_type(msg: Message) -> str | None:
    if msg.get_content_type() != "multipart/report":
        return None
    return _text(msg.get_param("report-type", "")).lower() or None


def _field_blocks(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    if isinstance(payload, str):
        # A part the parser left as text (message/global-delivery-status, RFC 6533).
        return [email.message_from_string(chunk.strip() + "\n")
                for chunk in re.split(r"\r?\n\s*\r?\n", payload) if chunk.strip()]
    return []


def _parts(msg: Message, *types: str) -> Iterator[Message]:
    for part in msg.walk():
        if part.get_content_type() in types:
            yield part


@dataclass(slots=True)
class Bounce:
    """What a bounce message says about the recipient."""

    permanent: bool
    addresses: set[str] = field(default_factory=set)
    detail: str = ""


def _recipient(block: Message) -> str | None:
    for name in ("original-recipient", "final-recipient"):
        value = _text(block.get(name))
        kind, _, address = value.partition(";")
        address = address.strip().strip("<>").strip() if address else ""
        if kind.strip().lower() == "rfc822" and "@" in address:
            return address.lower()
    return None


def _verdict(block: Message) -> bool | None:
    """True hard, False soft, None not a failure (delivered, relayed, expanded)."""
    action = _text(block.get("action")).lower()
    found = _STATUS.search(_text(block.get("status"))) or _STATUS.search(
        _text(block.get("diagnostic-code")))
    status = found.group(1) if found else None
    if action.startswith("delayed"):
        return False
    if not action.startswith(("failed", "error")):  # opensmtpd says "error"
        return None
    if status is None:
        return True
    return status.startswith("5") and not SOFT_PERMANENT.match(status)


def read_bounce(msg: Message) -> Bounce | None:
    """Hard or soft, and the addresses, of a bounce; None when it reports no failure."""
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # noqa: BLE001 - a detector choking on odd input is no reason to stop
        log.warning("flufl.bounce could not read a bounce", exc_info=True)
        temporary, permanent = frozenset(), frozenset()
    reported = {a.decode("ascii", "replace").lower() for a in temporary | permanent}
    blocks = [b for part in _parts(msg, "message/delivery-status",
                                   "message/global-delivery-status")
              for b in _field_blocks(part)]
    failing = [(b, v) for b in blocks if (v := _verdict(b)) is not None]
    if failing:
        # An RFC 3464 DSN: its own Action and Status fields decide.
        hard = any(v for _, v in failing)
        block = next(b for b, v in failing if v == hard)
        status = _text(block.get("status"))
        diagnostic = _text(block.get("diagnostic-code"))
        detail = "; ".join(x for x in (f"Status: {status}" if status else "",
                                       f"Diagnostic-Code: {diagnostic}" if diagnostic else "")
                           if x) or ("failed" if hard else "delayed")
        addresses = reported | {a for b, _ in failing if (a := _recipient(b))}
        return Bounce(hard, addresses, detail)
    if blocks:
        return None  # a DSN that reports success, relaying or expansion
    if permanent or temporary:
        # Not a DSN: one of flufl.bounce's detectors for older bounce formats found it.
        subject = _text(msg.get("subject"))[:200]
        return Bounce(bool(permanent), reported,
                      f"non-DSN bounce ({'permanent' if permanent else 'temporary'}): "
                      f"{subject}")
    return None


def _original_headers(msg: Message) -> Message | None:
    """The reported message of an ARF report: message/rfc822 or text/rfc822-headers."""
    for part in _parts(msg, "message/rfc822", "text/rfc822-headers"):
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
        raw = part.get_payload(decode=True)  # text/rfc822-headers, maybe base64 or QP
        if isinstance(raw, bytes):
            return email.message_from_bytes(raw.lstrip(), policy=email.policy.compat32)
    return None


def _feedback_fields(msg: Message) -> Message | None:
    for part in _parts(msg, "message/feedback-report"):
        blocks = _field_blocks(part)
        if blocks:
            return blocks[0]
    return None


def delivery_of_original(settings: Settings, original: Message) -> int | None:
    """The delivery an original message of ours names: by its Message-ID, its Return-Path
    (the VERP address) or the mailto address in its List-Unsubscribe header."""
    candidates: list[tuple[str, str | None, AddressPurpose]] = []
    message_id = _text(original.get("message-id"))
    if message_id:
        candidates.append((message_id, None, AddressPurpose.MESSAGE))
    return_path = parseaddr(_text(original.get("return-path")))[1]
    if return_path:
        candidates.append((return_path, "bounces", AddressPurpose.BOUNCE))
    for mailto in re.findall(r"<mailto:([^>?]+)", _text(original.get("list-unsubscribe")),
                             flags=re.IGNORECASE):
        candidates.append((mailto, "unsubscribe", AddressPurpose.UNSUBSCRIBE))
    for value, prefix, purpose in candidates:
        found = bounces.delivery_id_of(settings, value, prefix, purpose)
        if found is not None:
            return found
    return None


# --- Acting on them ---------------------------------------------------------------------


class InboundHandler:
    """The aiosmtpd handler: RCPT checks the address, DATA reads the message and acts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Messages being processed right now; stopping lets them finish.
        self.busy: set[asyncio.Task[Any]] = set()

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if route(self.settings, address) is None:
            log.info("refused RCPT TO:<%s> from %s", address, session.peer)
            return NO_SUCH_USER
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        task = asyncio.current_task()
        if task is not None:
            self.busy.add(task)
        try:
            data = envelope.original_content or envelope.content or b""
            if isinstance(data, str):
                data = data.encode("utf-8", "surrogateescape")
            routes = list(dict.fromkeys(r for a in envelope.rcpt_tos
                                        if (r := route(self.settings, a))))
            outcome = await self.process(data, routes)
            log.info("message from <%s> to %s: %s", envelope.mail_from,
                     ", ".join(envelope.rcpt_tos), outcome)
            return OK
        except Exception as exc:  # noqa: BLE001 - nothing a sender sends may stop us
            if is_outage(exc):
                log.warning("database unavailable, asking the sender to retry: %s", exc)
                return TRY_AGAIN
            log.exception("could not process a message from <%s> to %s; accepted and "
                          "dropped", envelope.mail_from, ", ".join(envelope.rcpt_tos))
            return OK
        finally:
            if task is not None:
                self.busy.discard(task)

    async def process(self, data: bytes, routes: list[Route]) -> str:
        """Act on one message to the accepted ``routes``; returns what happened."""
        msg = parse(data)
        kind = report_type(msg)
        if kind == "feedback-report":
            return await self.complaint(msg, routes)
        outcomes = []
        for r in routes:
            if r.purpose is AddressPurpose.BOUNCE:
                outcomes.append(await self.bounce(msg, r.delivery_id))
            elif kind in ("delivery-status", "global-delivery-status"):
                # A bounce sent to an unsubscribe address is not a request to unsubscribe.
                outcomes.append(f"delivery {r.delivery_id}: a DSN to the unsubscribe address, "
                                "ignored")
            else:
                outcomes.append(await self.unsubscribe(msg, r.delivery_id))
        return "; ".join(outcomes) or "no recipient"

    async def bounce(self, msg: Message, delivery_id: int) -> str:
        delivery = await Delivery.get_or_none(id=delivery_id)
        if delivery is None or delivery.channel != "email":
            return f"delivery {delivery_id}: unknown, bounce ignored"
        found = read_bounce(msg)
        if found is None:
            return f"delivery {delivery_id}: not a failure report, ignored"
        user = await User.get_or_none(id=delivery.user_id)
        address = user.email.lower() if user and user.email else None
        # The VERP token names the delivery, and so the address we sent it to: that is the
        # only address a bounce may count against. Addresses named in the report are never
        # suppressed themselves, or anyone holding one of our VERP addresses could suppress
        # any address with a forged DSN. A report that names only other addresses (the mail
        # was forwarded, or the user changed address since) counts as a soft bounce: a
        # forward that keeps failing still reaches the threshold.
        permanent = found.permanent and (not found.addresses or address in found.addresses)
        if found.permanent and not permanent:
            await bounces.mark_bounced(delivery, found.detail)
        result = await bounces.record_bounce(self.settings, delivery, address,
                                             permanent=permanent, detail=found.detail)
        kind = "hard" if found.permanent else "soft"
        return f"delivery {delivery_id}: {kind} bounce, {result}"

    async def complaint(self, msg: Message, routes: list[Route]) -> str:
        report = _feedback_fields(msg)
        feedback_type = _text(report.get("feedback-type")).lower() if report else ""
        if report is None or not feedback_type:
            # Withdrawing consent on the word of a report we cannot read would be wrong.
            return "ARF report without a readable Feedback-Type, ignored"
        if feedback_type not in COMPLAINT_TYPES:
            return f"ARF {feedback_type} report, not a complaint, ignored"
        original = _original_headers(msg)
        delivery_id = delivery_of_original(self.settings, original) if original else None
        routed = {r.delivery_id for r in routes}
        if delivery_id is None and routes:
            # No usable original: a feedback loop that reports to the Return-Path still
            # names the delivery by the address it wrote to.
            delivery_id = routes[0].delivery_id
        elif delivery_id not in routed:
            # Only the token address the report came to is a credential: an original that
            # names another delivery (say, by a Message-ID copied from a forwarded mail)
            # must not suppress its recipient.
            return "ARF report about another delivery than its address names, ignored"
        delivery = await Delivery.get_or_none(id=delivery_id) if delivery_id else None
        if delivery is None:
            return "ARF report naming no delivery of ours, ignored"
        user = await User.get_or_none(id=delivery.user_id)
        # The address we sent the delivery to; never one the report names (Original-Rcpt-To
        # is often redacted, and a forged report could name anyone's).
        address = user.email if user and user.email else None
        agent = _text(report.get("user-agent")) or _text(report.get("reporting-mta"))
        detail = f"ARF {feedback_type} report" + (f" by {agent}" if agent else "")
        result = await bounces.record_complaint(self.settings, delivery, address, detail)
        return f"delivery {delivery.id}: complaint, {result}"

    async def unsubscribe(self, msg: Message, delivery_id: int) -> str:
        if "@" not in parseaddr(_text(msg.get("from")))[1]:
            # Every message a person's mail program sends has a From address (RFC 5322);
            # without one this is noise, not a request.
            return f"delivery {delivery_id}: no From address, not a request, ignored"
        delivery = await Delivery.get_or_none(id=delivery_id)
        if delivery is None:
            return f"delivery {delivery_id}: unknown, unsubscribe ignored"
        result = await bounces.record_mailto_unsubscribe(self.settings, delivery)
        return f"delivery {delivery_id}: unsubscribe, {result}"


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is unreachable or busy for now (retry later)."""
    return is_unavailable(exc)


# --- The server ---------------------------------------------------------------------------


class InboundServer:
    """A running listener; ``port`` is the one bound (useful with port 0)."""

    def __init__(self, server: asyncio.Server, handler: InboundHandler,
                 sessions: weakref.WeakSet[SMTP]) -> None:
        self.server = server
        self.handler = handler
        self._sessions = sessions

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop accepting, let messages being processed finish, then close connections."""
        self.server.close()
        busy = set(self.handler.busy)
        if busy:
            await asyncio.wait(busy, timeout=STOP_GRACE_SECONDS)
        tasks = []
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
            # aiosmtpd keeps the session's task here; it is cancelled as the connection
            # closes, and awaited so nothing outlives the database.
            task = getattr(session, "_handler_coroutine", None)
            if task is not None:
                tasks.append(task)
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS)
        await self.server.wait_closed()


async def start_server(settings: Settings, host: str, port: int) -> InboundServer:
    """Listen on ``host``:``port`` (0: any free port) on the running loop.

    Call it where the database is open (inside ``with ctx:``, or with the global context
    set, as the web app does): the sessions inherit the caller's context.
    """
    handler = InboundHandler(settings)
    sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
    loop = asyncio.get_running_loop()

    def session() -> SMTP:
        smtp = SMTP(handler, data_size_limit=MAX_MESSAGE_BYTES, hostname=settings.mail_domain,
                    ident=f"notify {__version__}", loop=loop)
        sessions.add(smtp)
        return smtp

    server = await loop.create_server(session, host=host, port=port)
    return InboundServer(server, handler, sessions)


@contextlib.asynccontextmanager
async def serving(settings: Settings, host: str = "127.0.0.1",
                  port: int = 0) -> AsyncIterator[InboundServer]:
    """``async with serving(settings) as server:`` listens until the block ends."""
    server = await start_server(settings, host, port)
    try:
        yield server
    finally:
        await server.close()


def cmd_inbound(args: argparse.Namespace, settings: Settings) -> int:
    from notify.cli import CliError, _ensure_data_dir, run_db
    from notify.db import apply_migrations

    host = args.host or settings.inbound_host
    port = args.port or settings.inbound_port

    async def work(ctx) -> int:  # noqa: ANN001
        await apply_migrations(ctx)
        try:
            server = await start_server(settings, host, port)
        except OSError as exc:
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"notify inbound listening on {host}:{server.port} for bounces+ and "
              f"unsubscribe+ addresses @{settings.mail_domain}; stop with Ctrl-C or SIGTERM",
              flush=True)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await server.close()
        return 0

    _ensure_data_dir(settings)
    return run_db(settings, work)
