"""The postman: turns queued email deliveries into sent messages, and owns retrying.

For each delivery it asks the eligibility rule again, renders the templates, builds the
message with its headers (stable Message-ID, VERP Return-Path, one-click unsubscribe),
signs it (DKIM) and hands it to the channel. A temporary failure is tried again later,
with exponential backoff and jitter, until the delivery's deadline; a permanent one is
recorded as failed, and an unknown mailbox (5.1.x) also suppresses the address.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import jinja2
from tortoise import connections
from tortoise.expressions import F, Q, Subquery
from tortoise.transactions import in_transaction

from notify import audience, eligibility, i18n, links, mail, render_once, store
from notify.channels import DeliveryError, EmailChannel, Envelope
from notify.consent import ConsentState
from notify.db import is_unavailable
from notify.metrics import SEND_SECONDS
from notify.models import (
    AddressKind,
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryStatus,
    PolicyVersion,
    Suppression,
    User,
)
from notify.settings import Channel, Settings
from notify.tokens import AddressPurpose, address_token

log = logging.getLogger(__name__)

#: How long a claimed delivery belongs to its worker; a crashed worker's claims expire.
LEASE = timedelta(minutes=5)
#: First pause after a temporary failure (NOTIFY_RETRY_FIRST_PAUSE_SECONDS); it doubles
#: each time, up to MAX_PAUSE.
FIRST_PAUSE = timedelta(seconds=30)
MAX_PAUSE = timedelta(hours=1)
#: While the database is away, writing a batch's outcomes is tried again after these
#: pauses (doubling), until the batch's lease runs out.
OUTCOME_RETRY_FIRST = 0.2
OUTCOME_RETRY_MAX = 5.0


class Signer(Protocol):
    def sign(self, message: bytes) -> bytes: ...


def pause_after(attempts: int, rng: random.Random | None = None, *,
                first: timedelta = FIRST_PAUSE) -> timedelta:
    """Exponential backoff with ±20% jitter, so retries of many messages spread out.

    (A retry schedule kept in the database, not an in-process retry loop: it survives a
    restart and lets any worker take the retry over.)
    """
    base = min(first * 2 ** max(attempts - 1, 0), MAX_PAUSE)
    return base * (rng or random).uniform(0.8, 1.2)


class Postman:
    def __init__(self, settings: Settings, channel: EmailChannel,
                 signer: Signer | None = None) -> None:
        self.settings = settings
        self.channel = channel
        self.signer = signer

    async def enqueue(self, user: User, kind: str, *, topic: str | None = None,
                      context: dict[str, Any] | None = None) -> Delivery:
        when = store.now()
        return await Delivery.create(
            user_id=user.id, channel="email", kind=kind, topic=topic, context=context or {},
            next_attempt_at=when, deadline=when + timedelta(hours=self.settings.retry_hours))

    async def send_now(self, delivery: Delivery) -> Delivery:
        """Try a freshly queued delivery at once; a temporary failure leaves it queued."""
        claimed = await Delivery.filter(id=delivery.id, status=DeliveryStatus.QUEUED).update(
            status=DeliveryStatus.SENDING,
            lease_until=store.now() + timedelta(seconds=self.settings.worker_lease_seconds))
        if claimed:
            await self.deliver(await Delivery.get(id=delivery.id))
        return await Delivery.get(id=delivery.id)

    def batch_size(self, per_connection: int, most: int) -> int:
        """How many email deliveries the sender claims at once (see ``jobs.EMAIL_BATCH``)."""
        size = min(most, per_connection * self.settings.smtp_pool_size)
        return min(size, self.settings.smtp_rate) if self.settings.smtp_rate else size

    async def deliver_due(self, limit: int = 50) -> int:
        """One batch of the sender's work: claim due deliveries and deliver them."""
        if self.settings.smtp_rate:
            # The rate limiter waits inside the channel, after the batch's checks: a batch
            # no larger than a second's worth keeps each check within a second of its send.
            limit = min(limit, self.settings.smtp_rate)
        batch = await self.claim(limit)
        if batch:
            await self.deliver_batch(batch)
        return len(batch)

    async def claim(self, limit: int) -> list[Delivery]:
        return await claim("email", limit,
                           timedelta(seconds=self.settings.worker_lease_seconds))

    async def deliver(self, delivery: Delivery) -> None:
        await self.deliver_batch([delivery])

    async def deliver_batch(self, batch: list[Delivery]) -> None:
        """Deliver claimed deliveries: what the checks need is read for the whole batch at
        once, the messages are composed, then sent over the pool's connections, and the
        outcomes are written in one statement.
        """
        # Taken before the check reads anything: a withdrawal recorded before this moment
        # is always seen by the check (the campaign status measures the rest).
        checked_at = store.now()
        known = await Batch.load(self.settings, batch)
        await finish_batch(batch, [self._compose_and_send(batch, known, checked_at)])

    async def _compose_and_send(self, batch: list[Delivery], known: Batch,
                                checked_at: datetime) -> None:
        """Every message of the batch decided and composed, one after the other, then sent
        by one coroutine per connection of the pool, each taking the next message ready.

        A task per message waiting its turn at the pool cost a campaign worker 3% more CPU
        a message (the task, and a wake-up at the pool's semaphore per message) than these
        few senders: 0.441-0.453 ms against 0.426-0.436 (bench/campaign_send.py, six
        alternating runs of each; 58.2-60.2% of the ceiling against 59.4-62.3%).
        Composing in turn costs no waiting because composing never waits: no query (the
        link handles were given in ``Batch.load``), DKIM signed inline. Keep it so: a
        compose that awaited I/O (``DkimSigner.sign_async``, say) would be serialised here.
        A delivery whose composing or sending raised unexpectedly does not stop the
        others; the first such error is raised when all are done (``finish_batch``)."""
        errors: list[BaseException] = []
        ready = []
        for delivery in batch:
            try:
                envelope = await self._compose_one(delivery, known, checked_at)
            except Exception as exc:  # noqa: BLE001 - raised after the rest, see above
                errors.append(exc)
                continue
            if envelope is not None:
                ready.append((delivery, envelope))
        waiting = iter(ready)

        async def sender() -> None:
            for delivery, envelope in waiting:
                try:
                    await self._send_one(delivery, envelope, checked_at)
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)

        # Every sender ends before the outcomes are written, whatever one of them raised
        # (return_exceptions): a message still out would be recorded as unsent, then sent
        # again by whoever takes its claim over. A cancellation of the batch still cancels.
        senders = min(self.channel.concurrency, len(ready))
        ended = await asyncio.gather(*(sender() for _ in range(senders)),
                                     return_exceptions=True)
        errors += [result for result in ended if isinstance(result, BaseException)]
        if errors:
            raise errors[0]

    async def _deliver_one(self, delivery: Delivery, known: Batch, checked_at: datetime
                           ) -> None:
        """Decide, compose and send one delivery; the outcome goes onto the object."""
        envelope = await self._compose_one(delivery, known, checked_at)
        if envelope is not None:
            await self._send_one(delivery, envelope, checked_at)

    async def _compose_one(self, delivery: Delivery, known: Batch, checked_at: datetime
                           ) -> Envelope | None:
        """Decide and compose one delivery; None when that decided its outcome (skipped,
        held, failed), which then is on the object."""
        if store.now() > delivery.deadline:
            # A claim taken over from a dead worker, or left too long: past its deadline.
            set_outcome(delivery, DeliveryStatus.FAILED, attempts=delivery.attempts + 1,
                     last_error=delivery.last_error or "deadline passed")
            return None
        try:
            return await self._prepare(delivery, known)
        except _Hold:
            # Its campaign was paused meanwhile: wait for resume, no attempt used.
            set_outcome(delivery, DeliveryStatus.HELD)
        except _Skip as skip:
            status = (DeliveryStatus.CANCELLED if skip.reason is eligibility.SkipReason.CANCELLED
                      else DeliveryStatus.SKIPPED)
            set_outcome(delivery, status, skip_reason=skip.reason, checked_at=checked_at)
        except jinja2.TemplateError as exc:
            # Trying again renders the same error: fail now, with the template's words.
            set_outcome(delivery, DeliveryStatus.FAILED, attempts=delivery.attempts + 1,
                     last_error=f"template error: {exc}")
        except Exception as exc:
            # A message that cannot be built now will not build later: record why, never
            # leave it claimed to be retried for ever.
            log.exception("delivery %s cannot be composed", delivery.id)
            set_outcome(delivery, DeliveryStatus.FAILED, attempts=delivery.attempts + 1,
                     last_error=f"cannot compose: {exc!r}"[:500])
        return None

    async def _send_one(self, delivery: Delivery, envelope: Envelope, checked_at: datetime
                        ) -> None:
        """Send one composed delivery; the outcome goes onto the object."""
        started = time.perf_counter()
        if delivery.lease_until is not None and store.now() >= delivery.lease_until:
            # Our claim ran out (a hung relay, a paused process): another worker may have
            # taken it over. Sending now could send twice; leave it to the new owner.
            log.warning("delivery %s: lease expired before sending; left to another worker",
                        delivery.id)
            set_outcome(delivery, DeliveryStatus.SENDING)
            return
        try:
            receipt = await self.channel.send(envelope)
        except DeliveryError as exc:
            await self._failed(delivery, exc, envelope.rcpt_to[0])
            return
        _EMAIL_SEND_SECONDS.observe(time.perf_counter() - started)
        set_outcome(delivery, DeliveryStatus.SENT, sent_at=store.now(),
                 provider_ref=receipt.reference, attempts=delivery.attempts + 1,
                 checked_at=checked_at)

    async def _prepare(self, delivery: Delivery, known: Batch) -> Envelope:
        settings = self.settings
        campaign = known.campaigns.get(delivery.campaign_id)
        if campaign is not None:
            if campaign.status == CampaignStatus.CANCELLED:
                raise _Skip(eligibility.SkipReason.CANCELLED)
            if campaign.status == CampaignStatus.PAUSED:
                raise _Hold()
        policy = known.policies.get(delivery.notice_of_id)
        user = known.users[delivery.user_id]
        topic = settings.topics.get(delivery.topic) if delivery.topic else None
        state = known.states.get((user.id, delivery.topic)) if delivery.topic else None
        who = eligibility.Recipient(
            erased=user.erased_at is not None, address=user.email,
            verified=user.email_verified, suppressed=known.is_suppressed(user),
            state=ConsentState(state) if state else None)
        notice = eligibility.Notice(material=policy.material) if policy else None
        reason = eligibility.skip_reason(delivery.kind, delivery.topic, topic, who, notice)
        if reason is not None:
            raise _Skip(reason)
        data = await self.compose(delivery, user, campaign, policy, known.renderings)
        return Envelope(links.verp_address(settings, delivery.id), (user.email,), data)

    async def compose(self, delivery: Delivery, user: User | Reader,
                      campaign: Campaign | None = None,
                      policy: PolicyVersion | None = None,
                      renderings: render_once.Renderings | None = None) -> bytes:
        """The message bytes of a delivery, exactly as sent (signed when DKIM is set);
        ``renderings`` shares a rendering of its templates with other messages of its
        batch where that is provably the same text."""
        settings = self.settings
        locale = i18n.choose(user.locale)
        topic = settings.topics.get(delivery.topic) if delivery.topic else None
        preferences_url, topic_link = await links.for_message(
            settings, user, topic.name if topic else None, delivery.id)
        # Gmail's Feedback-ID: complaint rates per campaign in its Postmaster Tools.
        headers = {"Message-ID": message_id(settings, delivery.id),
                   "Feedback-ID": f"{campaign.id if campaign else 0}:{delivery.kind}:"
                                  f"{delivery.topic or 'none'}:notify"}
        unsubscribe_url = None
        if topic is not None:
            # RFC 2369 and RFC 8058: every message a user can unsubscribe from carries
            # both ways out, and the one-click POST that mail providers use.
            unsubscribe_url = topic_link
            mailto = links.mailto_unsubscribe(settings, delivery.id)
            headers["List-Unsubscribe"] = f"<{unsubscribe_url}>, <mailto:{mailto}>"
            headers["List-Unsubscribe-Post"] = links.ONE_CLICK_BODY
            headers["List-Id"] = f"{topic.label('en')} <{topic.name}.{settings.mail_domain}>"
        context = {**(campaign.variables if campaign else {}), **delivery.context,
                   "name": user.name}
        if policy is not None:
            context.update(policy.notice_context())
        if delivery.kind == "confirmation" and topic is not None:
            context.update(topic_label=topic.label(locale), days=settings.pending_days,
                           confirm_url=await links.confirmation(settings, user, topic.name))
            headers.pop("List-Unsubscribe", None)
            headers.pop("List-Unsubscribe-Post", None)
            # The address is not confirmed yet and may be someone else's: a preference
            # link there would let a stranger subscribe the user to other topics.
            unsubscribe_url = preferences_url = None
        email = mail.Email(
            to=user.email, to_name=user.name,
            kind=campaign.template if campaign else delivery.kind, locale=locale,
            context=context, headers=headers,
            footer=mail.Footer(preferences_url=preferences_url,
                               unsubscribe_url=unsubscribe_url,
                               topic_label=topic.label(locale) if topic else None))
        data = mail.build_bytes(email, settings, renderings)
        return self.signer.sign(data) if self.signer else data

    async def send_test(self, campaign: Campaign, policy: PolicyVersion | None, address: str,
                        locale: str) -> str:
        """One rendering of a campaign to ``address``, outside its audience and its counts.

        No delivery row, so nothing is counted; the sample reader has no name and the
        footer's links point at the preference page, since a test reader is nobody's user.
        Returns the relay's reference.
        """
        settings = self.settings
        context: dict[str, Any] = {**campaign.variables, "name": None}
        if policy is not None:
            context.update(policy.notice_context())
        topic = settings.topics.get(campaign.topic) if campaign.topic else None
        email = mail.Email(
            to=address, to_name=None, kind=campaign.template, locale=i18n.choose(locale),
            context=context, headers={"X-Notify-Test": f"campaign {campaign.id}"},
            footer=mail.Footer(preferences_url=f"{settings.public_url}/preferences",
                               topic_label=topic.label(locale) if topic else None))
        message = mail.build(email, settings)
        message.replace_header("Subject", f"[Test] {message['Subject']}")
        data = message.as_bytes()
        data = self.signer.sign(data) if self.signer else data
        receipt = await self.channel.send(Envelope(settings.mail_from, (address,), data))
        return receipt.reference

    async def _failed(self, delivery: Delivery, exc: DeliveryError, address: str) -> None:
        attempts = delivery.attempts + 1
        pause = retry_pause(self.settings, attempts)
        if exc.temporary and store.now() + pause < delivery.deadline:
            log.info("delivery %s: temporary failure, retrying in %.0fs: %s", delivery.id,
                     pause.total_seconds(), exc.detail)
            set_outcome(delivery, DeliveryStatus.QUEUED, attempts=attempts, last_error=exc.detail,
                     next_attempt_at=store.now() + pause)
            return
        log.warning("delivery %s failed: %s", delivery.id, exc.detail)
        # An unknown mailbox refused at once is a hard bounce, counted as one by the
        # campaign's bounce guard; anything else permanent is a failure.
        set_outcome(delivery, DeliveryStatus.BOUNCED if exc.is_unknown_address
                 else DeliveryStatus.FAILED, attempts=attempts, last_error=exc.detail)
        if exc.is_unknown_address:
            # An unknown mailbox at send time is a hard bounce: never again to it.
            from notify import bounces

            # No delivery named: its status is this batch's to write.
            await bounces.record_bounce(self.settings, None, address, permanent=True,
                                        detail=exc.detail)


#: What delivering writes back to a delivery row (in one statement per batch), with each
#: column's PostgreSQL type for that statement's arrays.
_OUTCOME_TYPES = {"status": "text", "skip_reason": "text", "attempts": "int",
                  "last_error": "text", "next_attempt_at": "timestamptz",
                  "deadline": "timestamptz", "sent_at": "timestamptz", "provider_ref": "text",
                  "checked_at": "timestamptz", "lease_until": "timestamptz",
                  "notice_of_id": "bigint", "updated_at": "timestamptz"}
_OUTCOME_FIELDS = tuple(_OUTCOME_TYPES)
#: A policy notice that ended so never reached the user: it does not count as the one
#: notice of its version, so a later campaign may bring it.
_NOT_NOTIFIED = (DeliveryStatus.SKIPPED, DeliveryStatus.FAILED, DeliveryStatus.CANCELLED)


def retry_pause(settings: Settings, attempts: int) -> timedelta:
    """The pause before the next try after ``attempts`` temporary failures."""
    return pause_after(attempts, first=timedelta(seconds=settings.retry_first_pause_seconds))


async def finish_batch(batch: list[Delivery], sends: list[Awaitable[None]]) -> None:
    """Run a batch's sends, then record every outcome they reached, whatever happened.

    One send failing unexpectedly (a database error while it recorded a bounce, a bug)
    must not lose the outcomes of the others: those messages were handed over, and
    unrecorded they would be sent again once the lease ran out. A delivery whose send
    raised keeps its claim and is taken over later. The first error is raised afterwards.
    """
    try:
        results = await asyncio.gather(*sends, return_exceptions=True)
    except asyncio.CancelledError:
        # Cut off by the shutdown timeout: what was handed over is recorded if the
        # database still answers, and what was not keeps its claim (``sending``) for a
        # takeover. The cancellation goes on either way.
        try:
            await record_outcomes(batch)
        except Exception as exc:  # noqa: BLE001 - going down; a takeover follows
            log.warning("cut off: could not record the outcomes of %d deliveries (%s); "
                        "they will be taken over", len(batch), type(exc).__name__)
        raise
    await record_outcomes(batch)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def set_outcome(delivery: Delivery, status: DeliveryStatus, **values: Any) -> None:
    """Put an outcome on a claimed delivery; record_outcomes writes it."""
    delivery.status = status
    for name, value in values.items():
        setattr(delivery, name, value)


async def record_outcomes(batch: list[Delivery]) -> None:
    """Write a batch's outcomes in one statement, but only where the claim still holds.

    A row whose lease was taken over by another worker, or whose status changed while it
    was being sent (a complaint or bounce report, quick as they may be), is not
    overwritten: under the row locks taken here, what the others wrote stands. A "held"
    outcome (the campaign was paused) becomes "queued" if the campaign was resumed
    meanwhile, or it would wait for a resume that already happened.

    While the database is away (a restart, a failover) the write is tried again until the
    batch's lease runs out: the messages were handed over, and an outcome not written
    means they are taken over and sent a second time. After the lease, a new owner may
    have taken them: we give up and the campaign counts them as possible duplicates.
    """
    # The leases as claimed: a failed attempt must not compare against what it changed.
    claimed = {d.id: d.lease_until for d in batch}
    leases = [lease for lease in claimed.values() if lease is not None]
    until = min(leases) if leases else store.now()
    pause = OUTCOME_RETRY_FIRST
    # A hand-written loop rather than a retry library: the condition (the database is
    # away, as db.is_unavailable reads it) and the deadline (the lease) are ours, and it
    # is these few lines.
    while True:
        try:
            await _record_outcomes(batch, claimed)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            if store.now() + timedelta(seconds=pause) >= until:
                log.error("could not record the outcomes of %d deliveries before their "
                          "lease ran out (the database is away): they will be taken over "
                          "and may be sent twice", len(batch))
                raise
            log.warning("database unavailable while recording %d outcomes (%s); trying "
                        "again in %.1fs", len(batch), type(exc).__name__, pause)
        else:
            if pause > OUTCOME_RETRY_FIRST:
                log.warning("database available again; %d outcomes recorded", len(batch))
            return
        await asyncio.sleep(pause)
        pause = min(pause * 2, OUTCOME_RETRY_MAX)


async def _record_outcomes(batch: list[Delivery], claimed: dict[int, datetime | None]
                           ) -> None:
    now = store.now()
    # Outcomes that leave a campaign's delivery open (held, or queued for a retry) follow
    # its campaign as it is now: paused holds, cancelled cancels (workers take only
    # deliveries of sending campaigns, so a queued one of a cancelled campaign would wait
    # for ever).
    waiting = {d.campaign_id for d in batch if d.campaign_id is not None
               and d.status in (DeliveryStatus.HELD, DeliveryStatus.QUEUED)}
    if not waiting and connections.get("default").capabilities.dialect != "sqlite":
        await _record_final(batch, claimed, now)
        return
    async with in_transaction():
        ours = {row["id"]: row["lease_until"] for row in await (
            Delivery.filter(id__in=[d.id for d in batch], status=DeliveryStatus.SENDING)
            .select_for_update().values("id", "lease_until"))}
        # The campaigns' statuses are read under a share lock, which pause and cancel
        # (FOR UPDATE) wait for: neither can slip in between this read and the write.
        campaigns = await _campaign_states(waiting) if waiting else {}
        mine = []
        for delivery in batch:
            if ours.get(delivery.id, "gone") != claimed[delivery.id]:
                continue  # taken over, or changed by a report: theirs stands
            if delivery.status == DeliveryStatus.SENDING:
                continue  # our lease ran out before sending: left for the next owner
            state = campaigns.get(delivery.campaign_id)
            if delivery.status in (DeliveryStatus.HELD, DeliveryStatus.QUEUED) and \
                    state == CampaignStatus.CANCELLED:
                delivery.status, delivery.skip_reason = DeliveryStatus.CANCELLED, "cancelled"
            elif delivery.status == DeliveryStatus.HELD and state != CampaignStatus.PAUSED:
                delivery.status = DeliveryStatus.QUEUED
            for name, value in _closed(delivery, now).items():
                setattr(delivery, name, value)
            mine.append(delivery)
        if mine:
            await _write(mine)


def _closed(delivery: Delivery, now: datetime) -> dict[str, Any]:
    """What a recorded outcome changes besides itself: the claim's lease goes, and a
    policy notice that never reached the user stops counting as its version's notice."""
    values: dict[str, Any] = {"lease_until": None, "updated_at": now}
    if delivery.notice_of_id is not None and delivery.status in _NOT_NOTIFIED:
        values["notice_of_id"] = None
    return values


async def _record_final(batch: list[Delivery], claimed: dict[int, datetime | None],
                        now: datetime) -> None:
    """The common case on PostgreSQL, every outcome final (sent, skipped, failed,
    cancelled, or retried without a campaign): one UPDATE, no transaction around a
    SELECT … FOR UPDATE. Its WHERE is the claim, as the claim was taken (still
    ``sending``, the same lease); a row that another transaction changes meanwhile is
    waited for and its WHERE read again on the new version (READ COMMITTED), so a
    takeover or a report's status stands, as under the locking read. Four round trips a
    batch became one: under a campaign's load each took milliseconds of waiting for a
    core (bench/campaign_send.py). The objects get the closing values (no lease) where
    this attempt wrote them: after a retried write whose first reply was lost, the
    database has them and the objects keep the lease."""
    done = [d for d in batch if d.status != DeliveryStatus.SENDING]  # SENDING: our lease
    if not done:  # ran out before sending; left for the next owner
        return
    closing = {d.id: _closed(d, now) for d in done}
    written = await _write(done, claimed, closing)
    if len(written) < len(done):
        # Taken over or reported on meanwhile, or written by an attempt whose reply was
        # lost (record_outcomes tries again): theirs, or ours, stands in the database.
        log.info("%d of %d outcomes not written: their claim is no longer ours as taken",
                 len(done) - len(written), len(done))
    for delivery in done:
        if delivery.id in written:
            for name, value in closing[delivery.id].items():
                setattr(delivery, name, value)


async def _campaign_states(ids: set[int]) -> dict[int, str]:
    """The campaigns' statuses, share-locked on PostgreSQL until the transaction ends."""
    conn = connections.get("default")
    if conn.capabilities.dialect == "sqlite":  # one writer at a time anyway
        return dict(await Campaign.filter(id__in=list(ids)).values_list("id", "status"))
    _, rows = await conn.execute_query(
        "SELECT id, status FROM campaigns WHERE id = ANY($1::bigint[]) FOR SHARE",
        [list(ids)])
    return {row["id"]: row["status"] for row in rows}


async def _write(rows: list[Delivery], claimed: dict[int, datetime | None] | None = None,
                 closing: dict[int, dict[str, Any]] | None = None) -> set[int]:
    """The outcomes in one statement on PostgreSQL: an UPDATE joined to the batch's values
    as arrays (``unnest``), so the server runs one statement, not one per row; SQLite
    runs one prepared UPDATE per row (executemany). Tortoise's bulk_update builds a CASE
    per field and row in Python, which cost more than the sending it recorded (0.6 ms a
    message in the profile).

    With ``claimed`` (PostgreSQL only: ``_record_final``), only the rows still claimed as
    they were are written, with ``closing``'s values over the rows' own; the ids written
    are returned."""
    conn = connections.get("default")
    sqlite = conn.capabilities.dialect == "sqlite"

    def value(field: str, row: Delivery) -> Any:  # noqa: ANN401
        found = getattr(row, field)
        if closing is not None and field in closing[row.id]:
            found = closing[row.id][field]
        if isinstance(found, datetime) and sqlite:
            return str(found.astimezone(UTC))  # as tortoise stores them in SQLite
        return found.value if isinstance(found, StrEnum) else found

    if not sqlite:
        columns = ", ".join(f"{field} = v.{field}" for field in _OUTCOME_FIELDS)
        arrays = ", ".join(f"${n}::{_OUTCOME_TYPES[field]}[]"
                           for n, field in enumerate(_OUTCOME_FIELDS, start=2))
        values = ([[row.id for row in rows]]
                  + [[value(field, row) for row in rows] for field in _OUTCOME_FIELDS])
        names = ["id", *_OUTCOME_FIELDS]
        where = "d.id = v.id"
        if claimed is not None:
            arrays += f", ${len(values) + 1}::timestamptz[]"
            values.append([claimed[row.id] for row in rows])
            names.append("claimed")
            where += (f" AND d.status = '{DeliveryStatus.SENDING.value}'"
                      " AND d.lease_until IS NOT DISTINCT FROM v.claimed")
        # execute_query_dict: tortoise's execute_query drops what an UPDATE returns.
        written = await conn.execute_query_dict(
            f"UPDATE deliveries AS d SET {columns} "
            f"FROM unnest($1::bigint[], {arrays}) AS v({', '.join(names)}) "
            f"WHERE {where} RETURNING d.id", values)
        return {row["id"] for row in written}
    assignments = ", ".join(f"{field} = ?" for field in _OUTCOME_FIELDS)
    await conn.execute_many(
        f"UPDATE deliveries SET {assignments} WHERE id = ?",
        [[value(field, row) for field in _OUTCOME_FIELDS] + [row.id] for row in rows])
    return {row.id for row in rows}


@dataclass(slots=True)
class Reader:
    """A user as the checks and the messages of a batch read one: the columns they need,
    as values (making 400 tortoise models a batch cost ~15 µs a message, a tenth of a
    message's own work). ``handle`` is filled in by ``store.handle_for`` when missing."""

    id: int
    handle: str | None
    email: str | None
    email_verified: bool
    phone: str | None
    phone_verified: bool
    email_hash: str | None
    phone_hash: str | None
    country: str | None
    locale: str
    time_zone: str | None
    name: str | None
    erased_at: object  # only ever tested against None


    def __post_init__(self) -> None:  # SQLite has no booleans
        self.email_verified = bool(self.email_verified)
        self.phone_verified = bool(self.phone_verified)


_READER_COLUMNS = ", ".join(Reader.__dataclass_fields__)


@dataclass
class Batch:
    """What the eligibility checks of one claimed batch need, read with a handful of
    queries: the users, their consents to the batch's topics, which of their addresses
    (email or phone, by ``kind``) are suppressed, the campaigns and the policy versions."""

    hash_key: bytes
    kind: AddressKind
    users: dict[int, Reader]
    states: dict[tuple[int, str], str]  # (user id, topic) -> consent state
    suppressed: set[str]  # address hashes
    campaigns: dict[int | None, Campaign]
    policies: dict[int | None, PolicyVersion]
    #: Templates rendered once for the batch's messages that can share them.
    renderings: render_once.Renderings = dataclasses.field(
        default_factory=render_once.Renderings)

    @classmethod
    async def load(cls, settings: Settings, batch: list[Delivery],
                   kind: AddressKind = AddressKind.EMAIL) -> Batch:
        conn = connections.get("default")
        user_ids = list({d.user_id for d in batch})
        sql = audience.Sql(conn.capabilities.dialect)
        _, rows = await conn.execute_query(
            f"SELECT {_READER_COLUMNS} FROM users WHERE id {sql.any_of(user_ids)}", sql.values)
        users = {row[0]: Reader(*row) for row in rows}
        topics = list({d.topic for d in batch if d.topic})
        states = {}
        if topics:
            sql = audience.Sql(conn.capabilities.dialect)
            _, rows = await conn.execute_query(
                f"SELECT user_id, topic, state FROM consents WHERE user_id "
                f"{sql.any_of(user_ids)} AND topic {sql.any_of(topics)}", sql.values)
            states = {(row[0], row[1]): row[2] for row in rows}
        found = cls(settings.hash_key, kind, users, states, set(), {}, {})
        hashes = {found.address_hash(u) for u in users.values() if found.address(u)}
        if hashes:
            found.suppressed = set(await Suppression.filter(
                kind=kind, address_hash__in=hashes).values_list("address_hash", flat=True))
        campaign_ids = {d.campaign_id for d in batch if d.campaign_id is not None}
        if campaign_ids:
            found.campaigns = {c.id: c for c in await Campaign.filter(id__in=campaign_ids)}
        policy_ids = {d.notice_of_id for d in batch if d.notice_of_id is not None}
        if policy_ids:
            found.policies = {p.id: p for p in await PolicyVersion.filter(id__in=policy_ids)}
        await store.give_handles([u for u in users.values() if u.handle is None])
        return found

    def address(self, user: User | Reader) -> str | None:
        return user.email if self.kind is AddressKind.EMAIL else user.phone

    def address_hash(self, user: User | Reader) -> str:
        # Kept on the row by store.save_user; computed for a row written some other way.
        kept = user.email_hash if self.kind is AddressKind.EMAIL else user.phone_hash
        return kept or store.address_hash(self.hash_key, self.kind, self.address(user))

    def is_suppressed(self, user: User | Reader) -> bool:
        return bool(self.address(user)) and self.address_hash(user) in self.suppressed


async def claim(channel: str, limit: int, lease: timedelta = LEASE) -> list[Delivery]:
    """Claim up to ``limit`` due deliveries of one channel for this worker (a lease).

    Takes queued deliveries whose time has come, and claims of a worker whose lease ran
    out (it died, or hung): those count as takeovers, since the dead worker may have handed
    the message over before it died.
    """
    now = store.now()
    until = now + lease
    async with in_transaction() as connection:
        postgres = connection.capabilities.dialect == "postgres"
        if postgres:
            expired = await _claim_expired_postgres(connection, channel, limit, now, until)
        else:
            expired = await _claim_expired(channel, limit, now, until)
        wanted = limit - len(expired)
        if wanted <= 0:
            due = []
        elif postgres:
            due = await _claim_due_postgres(connection, channel, wanted, now, until)
        else:
            due = await _claim_due(channel, wanted, now, until)
    # Expired claims first: they have waited a lease already, and behind a long queue of
    # due rows they would wait until their deadline.
    return expired + due


#: A claim of due deliveries on PostgreSQL, in one statement: the rows are locked, marked
#: and returned together (the ORM took a select, an update and a model per row: a
#: fifth of a campaign message's database cost). Only deliveries of sending campaigns (or
#: of none): a campaign's deliveries are inserted before it is marked sending (see
#: audience.enqueue).
#:
#: The channel and the status are written into the statement, not passed: the index it
#: reads is partial (``deliveries_due_email`` on (next_attempt_at, id) WHERE status =
#: 'queued' AND channel = 'email', migration 0007), and a plan made for any value of a
#: parameter cannot use a partial index, so once PostgreSQL settled on a generic plan for
#: the prepared statement every claim would read the whole table.
_CLAIM_DUE = """
WITH due AS (
    SELECT id FROM deliveries
    WHERE channel = '{channel}' AND status = 'queued' AND next_attempt_at <= $1
      AND (campaign_id IS NULL
           OR campaign_id IN (SELECT id FROM campaigns WHERE status = 'sending'))
    ORDER BY next_attempt_at, id LIMIT $2
    FOR UPDATE SKIP LOCKED)
UPDATE deliveries AS d SET status = 'sending', lease_until = $3
FROM due WHERE d.id = due.id
RETURNING d.*
"""

#: Claims whose lease ran out (their worker died or hung), taken over: the same rule for
#: the literals; the index is ``deliveries_leased`` (channel, id) WHERE status =
#: 'sending', a few hundred rows at most, read in the order they are taken.
_CLAIM_EXPIRED = """
WITH expired AS (
    SELECT id FROM deliveries
    WHERE channel = '{channel}' AND status = 'sending' AND lease_until < $1
    ORDER BY id LIMIT $2
    FOR UPDATE SKIP LOCKED)
UPDATE deliveries AS d SET lease_until = $3, takeovers = d.takeovers + 1
FROM expired WHERE d.id = expired.id
RETURNING d.*
"""

_CLAIM_DUE_SQL = {c.value: _CLAIM_DUE.format(channel=c.value) for c in Channel}
_CLAIM_EXPIRED_SQL = {c.value: _CLAIM_EXPIRED.format(channel=c.value) for c in Channel}


async def _claim_due_postgres(connection: Any, channel: str, limit: int,  # noqa: ANN401
                              now: datetime, until: datetime) -> list[Delivery]:
    # Read the claim index in order, whatever the statistics say: right after a
    # campaign's enqueue they still describe an empty table, and the planner sorted all
    # 800,000 queued rows for each batch of 200 (bench/campaign_send.py --growth: 1.8 s a
    # claim, 170 messages a second). For the rest of this transaction, which sorts
    # nothing else.
    await connection.execute_script(
        "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off")
    claimed = await _deliveries(connection, _CLAIM_DUE_SQL[channel], [now, limit, until])
    # RETURNING keeps no order: the order of the queue.
    return sorted(claimed, key=lambda d: (d.next_attempt_at, d.id))


async def _claim_expired_postgres(connection: Any, channel: str, limit: int,  # noqa: ANN401
                                  now: datetime, until: datetime) -> list[Delivery]:
    expired = await _deliveries(connection, _CLAIM_EXPIRED_SQL[channel], [now, limit, until])
    return sorted(expired, key=lambda d: d.id)


async def _deliveries(connection: Any, sql: str, values: list) -> list[Delivery]:  # noqa: ANN401
    """Whole deliveries rows (``*``) read by raw SQL on PostgreSQL, as models."""
    _, rows = await connection.execute_query(sql, values)
    return [Delivery._init_from_db(**dict(row)) for row in rows]


async def _claim_expired(channel: str, limit: int, now: datetime, until: datetime
                         ) -> list[Delivery]:
    # SQLite ignores FOR UPDATE SKIP LOCKED and has one writer anyway.
    expired = await (
        Delivery.filter(channel=channel, status=DeliveryStatus.SENDING, lease_until__lt=now)
        .order_by("id").limit(limit).select_for_update(skip_locked=True)
    )
    if expired:
        await Delivery.filter(id__in=[d.id for d in expired]).update(
            lease_until=until, takeovers=F("takeovers") + 1)
        for row in expired:
            row.takeovers += 1
            row.lease_until = until
    return expired


#: A text found by its Twilio SID, for a status callback (one or more per text sent). On
#: PostgreSQL through ``deliveries_sms_reference``, (provider_ref) WHERE channel = 'sms' AND
#: provider_ref IS NOT NULL (migration 0007): the literal again, for a generic plan.
_SMS_BY_REFERENCE = "SELECT * FROM deliveries WHERE channel = 'sms' AND provider_ref = $1"


async def sms_by_reference(reference: str) -> Delivery | None:
    """The text whose provider reference (Twilio's message SID) this is, or None."""
    connection = connections.get("default")
    if connection.capabilities.dialect != "postgres":
        return await Delivery.get_or_none(channel=Channel.SMS.value, provider_ref=reference)
    found = await _deliveries(connection, _SMS_BY_REFERENCE, [reference])
    return found[0] if found else None


async def _claim_due(channel: str, limit: int, now: datetime, until: datetime
                     ) -> list[Delivery]:
    due = await (
        Delivery.filter(Q(campaign_id__isnull=True)
                        | Q(campaign_id__in=Subquery(Campaign.filter(
                            status=CampaignStatus.SENDING).values("id"))),
                        channel=channel, status=DeliveryStatus.QUEUED,
                        next_attempt_at__lte=now)
        .order_by("next_attempt_at", "id").limit(limit)
        .select_for_update(skip_locked=True)
    )
    if due:
        await Delivery.filter(id__in=[d.id for d in due]).update(
            status=DeliveryStatus.SENDING, lease_until=until)
    for row in due:
        row.status, row.lease_until = DeliveryStatus.SENDING, until
    return due


_EMAIL_SEND_SECONDS = SEND_SECONDS.labels("email")  # looked up once, not per message


class _Hold(Exception):
    """The delivery's campaign is paused."""


class _Skip(Exception):
    def __init__(self, reason: eligibility.SkipReason) -> None:
        self.reason = reason


def message_id(settings: Settings, delivery: int) -> str:
    """Stable per delivery, so a retry reuses it and a report can name the delivery.

    Its own token purpose: a Message-ID travels in replies, forwards and archives, so it
    must not be the VERP token, which is what lets a report act on a delivery.
    """
    token = address_token(AddressPurpose.MESSAGE, delivery, settings.secret_keys)
    return f"<{token}@{settings.mail_domain}>"
