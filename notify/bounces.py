"""What happened to an address after we sent to it: the one place that records bounces, spam
complaints and mailto unsubscribes, whichever way they reach us (``notify inbound``, the
``POST /webhooks/bounces`` endpoint, or the postman when the relay refuses a recipient).

Bounces follow Mailman's scoring scheme:

* A hard (permanent) bounce - a DSN with ``Action: failed`` and a 5.x.x status (RFC 3464,
  RFC 3463), or a provider's webhook saying so - suppresses the address at once.
* A soft (temporary) bounce - ``Action: delayed`` or a 4.x.x status, a full mailbox -
  adds 0.5 to the address's score, at most once per (UTC) day: a mail system that
  reports the same trouble ten times in an afternoon is one bad day, not ten.
* A score whose last bounce is older than ``bounce_stale_days`` is stale and starts again
  from 0: an address that was in trouble last month and is fine since owes us nothing.
* A score that reaches ``bounce_threshold`` suppresses the address (reason hard_bounce,
  note "soft bounce score"). A hard bounce adds 1.0 to the score as well, so the score is
  a complete record of the address's trouble.

Scores and suppressions are keyed by a keyed hash of the address (``store.address_hash``),
never the address, so they outlive the erasure of the user. For the same reason a
suppression's note never carries the bounce text, which often quotes the address.

Spam complaints (ARF, RFC 5965, or a provider's webhook) suppress the address and withdraw
every marketing topic the user holds; mail to the List-Unsubscribe mailto address (RFC
2369) withdraws the topic of the message it answers.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, timedelta

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from notify import store
from notify.consent import ConsentSource, ConsentState
from notify.models import (
    AddressKind,
    BounceScore,
    Delivery,
    DeliveryStatus,
    SuppressionReason,
    User,
)
from notify.settings import Channel, Settings, Topic, TopicKind
from notify.tokens import AddressPurpose, verify_address_token

log = logging.getLogger(__name__)

HARD_WEIGHT = 1.0
SOFT_WEIGHT = 0.5
#: How much of a report's text goes into a ledger note or a delivery's last_error.
NOTE_LIMIT = 500
#: The outcome words, also answered by the webhook and logged by ``notify inbound``.
SUPPRESSED, SCORED, IGNORED, WITHDRAWN = "suppressed", "scored", "ignored", "withdrawn"

_STATUS_CODE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


async def record_bounce(settings: Settings, delivery: Delivery | None, email: str | None, *,
                        permanent: bool, detail: str) -> str:
    """Record a bounce of ``email``; ``delivery`` is the message that bounced, if known.

    Returns "suppressed" (the address is now suppressed), "scored" (a soft bounce raised
    its score) or "ignored" (a second soft bounce the same day, or no address to act on).
    ``email`` None (the address is unknown, say the user was erased) only marks the
    delivery.
    """
    if permanent and delivery is not None:
        await mark_bounced(delivery, detail)
    if not email:
        return IGNORED
    digest = store.address_hash(settings.hash_key, AddressKind.EMAIL, email)
    weight = HARD_WEIGHT if permanent else SOFT_WEIGHT
    score, counted = await _add_to_score(digest, weight, once_a_day=not permanent,
                                         stale_days=settings.bounce_stale_days)
    if permanent:
        code = _STATUS_CODE.search(detail)
        note = f"hard bounce {code.group(1)}" if code else "hard bounce"
        await store.suppress(settings.hash_key, AddressKind.EMAIL, email,
                             SuppressionReason.HARD_BOUNCE, note)
        return SUPPRESSED
    if not counted:
        return IGNORED
    if score >= settings.bounce_threshold:
        await store.suppress(settings.hash_key, AddressKind.EMAIL, email,
                             SuppressionReason.HARD_BOUNCE, "soft bounce score")
        return SUPPRESSED
    return SCORED


async def mark_bounced(delivery: Delivery, detail: str) -> None:
    """Record that ``delivery`` was accepted and then bounced (status bounced)."""
    # A delivery the relay refused at send time is "failed" already (the postman records
    # that, then reports the hard bounce here); "bounced" is for mail accepted first.
    await (Delivery.filter(id=delivery.id)
           .exclude(status__in=(DeliveryStatus.FAILED, DeliveryStatus.SKIPPED))
           .update(status=DeliveryStatus.BOUNCED,
                   last_error=detail[:NOTE_LIMIT * 4] or "bounced (no detail reported)",
                   updated_at=store.now()))
    fresh = await Delivery.get(id=delivery.id).only("id", "status", "last_error")
    delivery.status, delivery.last_error = fresh.status, fresh.last_error


async def _add_to_score(digest: str, weight: float, *, once_a_day: bool,
                        stale_days: int) -> tuple[float, bool]:
    """Add ``weight`` to the address's score; returns the score and whether it counted."""
    for attempt in range(2):
        try:
            async with in_transaction():
                when = store.now()
                row = await BounceScore.select_for_update().get_or_none(address_hash=digest)
                if row is None:
                    await BounceScore.create(address_hash=digest, score=weight,
                                             last_bounce_at=when)
                    return weight, True
                last = row.last_bounce_at.astimezone(UTC)
                score = row.score
                if when - last > timedelta(days=stale_days):
                    score = 0.0  # stale: the address has been fine for a while
                elif once_a_day and last.date() == when.date():
                    return score, False  # this day's trouble is counted already
                row.score = score + weight
                row.last_bounce_at = when
                await row.save(update_fields=["score", "last_bounce_at"])
                return row.score, True
        except IntegrityError:
            # Two first bounces of an address raced to create its row; the loser retries
            # once and then finds the winner's row under the lock.
            if attempt:
                raise
    raise AssertionError("unreachable")


async def record_complaint(settings: Settings, delivery: Delivery | None, email: str | None,
                           detail: str) -> str:
    """A spam complaint (an ARF report, RFC 5965, or a provider's webhook).

    Suppresses the address (reason complaint) and withdraws every marketing topic the user
    holds, recorded in the ledger with source "complaint" and actor "feedback-loop". The
    user is the delivery's, else the one with this address. Returns "suppressed", or
    "ignored" when there is neither an address nor a user to act on.
    """
    user = None
    if delivery is not None:
        user = await User.get_or_none(id=delivery.user_id)
    elif email:
        user = await User.get_or_none(email=email.strip().lower())
    if not email and user is not None:
        email = user.email
    if not email and user is None:
        return IGNORED
    if email:
        await store.suppress(settings.hash_key, AddressKind.EMAIL, email,
                             SuppressionReason.COMPLAINT, "spam complaint")
    marketing = [name for name, t in settings.topics.items() if t.kind is TopicKind.MARKETING]
    if delivery is not None:
        # Counted against its campaign: the complaint-rate guard reads this.
        await (Delivery.filter(id=delivery.id)
               .exclude(status__in=(DeliveryStatus.FAILED, DeliveryStatus.SKIPPED))
               .update(status=DeliveryStatus.COMPLAINED))
    evidence = store.Evidence(source=ConsentSource.COMPLAINT, actor="feedback-loop",
                              note=_note(detail) or "spam complaint",
                              delivery_id=delivery.id if delivery else None)
    await _withdraw(settings, user, marketing, evidence)
    return SUPPRESSED


async def record_mailto_unsubscribe(settings: Settings, delivery: Delivery) -> str:
    """Mail to the List-Unsubscribe mailto address of ``delivery`` (RFC 2369).

    Withdraws the delivery's topic, or every marketing topic for a message without one,
    with source "mailto". Returns "withdrawn", or "ignored" when nothing was held.
    """
    user = await User.get_or_none(id=delivery.user_id)
    if delivery.topic:
        names = [delivery.topic]
    else:
        names = [name for name, t in settings.topics.items() if t.kind is TopicKind.MARKETING]
    evidence = store.Evidence(source=ConsentSource.MAILTO, actor="user",
                              note=f"mail to the List-Unsubscribe address of delivery "
                                   f"{delivery.id}", delivery_id=delivery.id)
    withdrawn = await _withdraw(settings, user, names, evidence)
    return WITHDRAWN if withdrawn else IGNORED


async def _withdraw(settings: Settings, user: User | None, names: list[str],
                    evidence: store.Evidence) -> int:
    """Withdraw those of ``names`` the user holds (subscribed or pending); returns how many.

    A topic never asked about is left alone: a complaint must not write a ledger event for
    something the user never had.
    """
    if user is None or user.erased_at is not None:
        return 0  # erasure withdrew everything already
    held = await store.consent_states(user)
    done = 0
    for name in names:
        row = held.get(name)
        if row is None or row.state == ConsentState.UNSUBSCRIBED:
            continue
        # A topic removed from the configuration since still gets its withdrawal recorded.
        topic = settings.topics.get(name) or Topic(name, Channel.EMAIL, TopicKind.MARKETING,
                                                   False, {"en": name})
        change, _ = await store.change_consent(user, topic, False, evidence,
                                               default_policy=settings.policy_version)
        done += change.is_change
    return done


def _note(detail: str) -> str:
    text = " ".join(detail.split())
    return text if len(text) <= NOTE_LIMIT else text[: NOTE_LIMIT - 1] + "…"


def delivery_id_of(settings: Settings, address: str, prefix: str | None,
                   purpose: AddressPurpose) -> int | None:
    """The delivery an address of ours names: ``prefix+TOKEN@mail_domain`` (VERP and mailto
    addresses) or, with ``prefix`` None, ``TOKEN@mail_domain`` (a Message-ID). None for
    anything else, a token that does not verify, or one made for another purpose."""
    address = address.strip().strip("<>").strip()
    local, at, domain = address.rpartition("@")
    if not at or domain.lower() != settings.mail_domain.lower():
        return None
    if prefix is not None:
        head, plus, local = local.partition("+")
        if not plus or head.lower() != prefix:
            return None
    found = verify_address_token(local, settings.secret_keys)
    if found is None or found[0] is not purpose:
        return None
    return found[1]


async def delivery_for_message_id(settings: Settings, message_id: str) -> Delivery | None:
    """The delivery whose Message-ID (``<TOKEN@mail_domain>``) this is, if it is ours."""
    found = delivery_id_of(settings, message_id, None, AddressPurpose.MESSAGE)
    return None if found is None else await Delivery.get_or_none(id=found)
