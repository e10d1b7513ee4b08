"""The courier: turns queued SMS deliveries into sent texts, the SMS twin of the postman.

It shares the postman's outbox machinery (``postman.claim``, ``postman.set_outcome``,
``postman.record_outcomes``, ``postman.pause_after``), so both channels lease, batch,
retry and give up the same way. For each delivery of a batch it asks the eligibility
rule again with the phone as the address, holds
the text back during the recipient's quiet hours, renders and measures it, sends it and
records the outcome. Twilio's verdicts on the number (21610, 21211, 21614) also suppress
it, and 21610 withdraws SMS consent (``notify.sms.actions``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import jinja2

from notify import eligibility, i18n, postman, store
from notify.channels import DeliveryError
from notify.channels.sms import SmsChannel, SmsMessage
from notify.consent import ConsentState
from notify.errors import InvalidRequest
from notify.metrics import SEND_SECONDS
from notify.models import (
    AddressKind,
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryStatus,
    User,
)
from notify.pace import Pace
from notify.settings import Channel, Settings, TopicKind
from notify.sms import actions, mask, quiet, texts

log = logging.getLogger(__name__)

STATUS_PATH = "/webhooks/twilio/status"


class SmsCourier:
    """``clock`` is the time source (``store.now``); tests pass a fixed one to drive quiet
    hours and deadlines with explicit times instead of sleeping."""

    def __init__(self, settings: Settings, channel: SmsChannel, *,
                 clock: Callable[[], datetime] = store.now) -> None:
        self.settings = settings
        self.channel = channel
        self.clock = clock
        # At most sms_rate texts a second, on average and in any one second (notify.pace).
        self._rate = Pace(settings.sms_rate) if settings.sms_rate else None

    async def enqueue(self, user: User, kind: str, *, topic: str | None = None,
                      context: dict[str, Any] | None = None) -> Delivery:
        """Queue one SMS. Refuses at once what could never be sent: a kind without an SMS
        template, a missing or over-long variable, a topic of another channel."""
        context = dict(context or {})
        texts.check_context(kind, context)
        known = self.settings.topics.get(topic) if topic else None
        if known is not None and known.channel is not Channel.SMS:
            raise InvalidRequest(f"the topic {topic!r} is not an SMS topic", field="topic")
        when = self.clock()
        return await Delivery.create(
            user_id=user.id, channel=Channel.SMS.value, kind=kind, topic=topic,
            context=context, next_attempt_at=when,
            deadline=when + timedelta(hours=self.settings.retry_hours))

    async def deliver_due(self, limit: int = 50) -> int:
        """One batch of the sender's work: claim due SMS deliveries and deliver them."""
        if self.settings.sms_rate:
            # The checks are read for the whole batch before the rate's waits: a batch no
            # larger than a second's worth keeps each check within a second of its send.
            limit = max(1, min(limit, self.settings.sms_rate))
        batch = await postman.claim(Channel.SMS.value, limit,
                                    timedelta(seconds=self.settings.worker_lease_seconds))
        if batch:
            await self.deliver_batch(batch)
        return len(batch)

    async def deliver(self, delivery: Delivery) -> None:
        await self.deliver_batch([delivery])

    async def deliver_batch(self, batch: list[Delivery]) -> None:
        """As the postman does: what the checks need is read for the whole batch at once,
        the texts go concurrently, the outcomes are written in one statement."""
        # Taken before the checks read anything (see Postman.deliver_batch).
        checked_at = store.now()
        known = await postman.Batch.load(self.settings, batch, AddressKind.PHONE)
        await postman.finish_batch(
            batch, [self._deliver_one(d, known, checked_at) for d in batch])

    async def _deliver_one(self, delivery: Delivery, known: postman.Batch,
                           checked_at: datetime) -> None:
        if self._out_of_time(delivery, self.clock()):
            return
        campaign = known.campaigns.get(delivery.campaign_id)
        if campaign is not None:
            if campaign.status == CampaignStatus.CANCELLED:
                postman.set_outcome(delivery, DeliveryStatus.CANCELLED,
                                    skip_reason=eligibility.SkipReason.CANCELLED)
                return
            if campaign.status == CampaignStatus.PAUSED:
                postman.set_outcome(delivery, DeliveryStatus.HELD)  # until resumed
                return
        user = known.users[delivery.user_id]
        reason = self._skip_reason(delivery, user, known)
        if reason is not None:
            postman.set_outcome(delivery, DeliveryStatus.SKIPPED, skip_reason=reason,
                                checked_at=checked_at)
            return
        s = self.settings
        if self._in_quiet_hours(delivery, user, self.clock()):
            return
        try:
            body = self.compose(delivery, user, campaign)
        except (jinja2.TemplateError, texts.TooLong) as exc:
            # Rendering again gives the same text: fail now, saying why.
            postman.set_outcome(delivery, DeliveryStatus.FAILED, attempts=delivery.attempts + 1,
                                last_error=f"cannot compose: {exc}"[:500])
            return
        assert user.phone is not None  # eligibility said there is an address
        message = SmsMessage(to=user.phone, body=body,
                             status_callback=s.public_url + STATUS_PATH)
        if self._rate is not None:
            # Only a text about to go takes a place in the rate: one skipped, held back or
            # failed by the checks above takes none. The wait can last up to a second, so
            # the deadline and quiet hours are asked again for the moment it would go.
            await self._rate.acquire()
            now = self.clock()
            if self._out_of_time(delivery, now) or self._in_quiet_hours(delivery, user, now):
                return
        if delivery.lease_until is not None and store.now() >= delivery.lease_until:
            log.warning("delivery %s: lease expired before sending; left to another worker",
                        delivery.id)
            postman.set_outcome(delivery, DeliveryStatus.SENDING)  # written by nobody
            return
        started = time.perf_counter()
        try:
            receipt = await self.channel.send(message)
        except DeliveryError as exc:
            await self._failed(delivery, user, exc)
            return
        SEND_SECONDS.labels("sms").observe(time.perf_counter() - started)
        postman.set_outcome(delivery, DeliveryStatus.SENT, sent_at=self.clock(),
                            provider_ref=receipt.reference, attempts=delivery.attempts + 1,
                            checked_at=checked_at)

    @staticmethod
    def _out_of_time(delivery: Delivery, now: datetime) -> bool:
        """Past its deadline: failed, and True."""
        if now <= delivery.deadline:
            return False
        postman.set_outcome(delivery, DeliveryStatus.FAILED, attempts=delivery.attempts + 1,
                            last_error=delivery.last_error or "deadline passed")
        return True

    def _in_quiet_hours(self, delivery: Delivery, user: postman.Reader, now: datetime) -> bool:
        """In the recipient's quiet hours: queued until they end, and True."""
        s = self.settings
        zone = quiet.zone_for(user.time_zone, user.phone, s.sms_default_time_zone)
        opens = quiet.opens_at(now, zone, s.sms_quiet_start, s.sms_quiet_end)
        if opens is None:
            return False
        # Waiting is not a failed attempt, and must not eat into the time left for
        # retries: the deadline moves by the same amount.
        postman.set_outcome(delivery, DeliveryStatus.QUEUED, next_attempt_at=opens,
                            deadline=delivery.deadline + (opens - now))
        log.info("delivery %s waits for quiet hours to end at %s", delivery.id,
                 opens.isoformat())
        return True

    def compose(self, delivery: Delivery, user: User | postman.Reader,
                campaign: Campaign | None = None) -> str:
        """The text of a delivery, exactly as sent; raises TooLong past sms_max_segments.

        A campaign's text is its template with its variables (the delivery adds none)."""
        topic = self.settings.topics.get(delivery.topic) if delivery.topic else None
        marketing = topic is not None and topic.kind is TopicKind.MARKETING
        kind = campaign.template if campaign else delivery.kind
        context = {**(campaign.variables if campaign else {}), **delivery.context}
        text = texts.render(kind, i18n.choose(user.locale), context, marketing=marketing)
        texts.check_length(text, self.settings.sms_max_segments)
        return text

    def _skip_reason(self, delivery: Delivery, user: postman.Reader,
                     known: postman.Batch) -> eligibility.SkipReason | None:
        settings = self.settings
        topic = settings.topics.get(delivery.topic) if delivery.topic else None
        state = known.states.get((user.id, delivery.topic)) if delivery.topic else None
        who = eligibility.Recipient(
            erased=user.erased_at is not None, address=user.phone,
            verified=user.phone_verified, suppressed=known.is_suppressed(user),
            state=ConsentState(state) if state else None)
        return eligibility.skip_reason(delivery.kind, delivery.topic, topic, who)

    async def _failed(self, delivery: Delivery, user: postman.Reader,
                      exc: DeliveryError) -> None:
        attempts = delivery.attempts + 1
        now = self.clock()
        pause = postman.retry_pause(self.settings, attempts)
        if exc.temporary and now + pause < delivery.deadline:
            log.info("delivery %s: temporary failure, retrying: %s", delivery.id, exc.detail)
            postman.set_outcome(delivery, DeliveryStatus.QUEUED, attempts=attempts,
                                last_error=exc.detail, next_attempt_at=now + pause)
            return
        log.warning("delivery %s to %s failed: %s", delivery.id, mask(user.phone), exc.detail)
        postman.set_outcome(delivery, DeliveryStatus.FAILED, attempts=attempts,
                            last_error=exc.detail)
        # The batch read its users as values; a withdrawal writes through the model.
        await actions.apply_error_code(self.settings, await User.get_or_none(id=user.id),
                                       user.phone, exc.code, f"delivery {delivery.id}")

