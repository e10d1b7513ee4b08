"""Who may receive what: the pure rule, written once, asked again right before sending.

Imports nothing from the ORM or the channels. The database may pre-filter sets of users;
the postman asks this function about each delivery at the moment of sending, so a
withdrawal recorded after a message was queued always wins (privacy policy §2.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from notify.consent import ConsentState
from notify.settings import Topic


class SkipReason(StrEnum):
    """Why a queued delivery was not sent. Same words in the database, logs and API."""

    ERASED = "erased"  # the user was erased after the message was queued
    NO_ADDRESS = "no_address"  # no email address (or phone) to send to
    SUPPRESSED = "suppressed"  # the address bounced hard, complained, or was blocked
    UNVERIFIED = "unverified"  # topic mail goes only to verified addresses
    NOT_SUBSCRIBED = "not_subscribed"  # no consent (never asked, pending, or withdrawn)
    NOT_PENDING = "not_pending"  # a confirmation for a request that no longer waits
    UNKNOWN_TOPIC = "unknown_topic"  # the topic was removed from the configuration
    ALREADY_NOTIFIED = "already_notified"  # a notice of this policy version went before
    CANCELLED = "cancelled"  # the campaign was cancelled before this was sent


#: Campaign kinds. A policy notice is a legal notice (§1.4): a material change reaches
#: every deliverable address whatever its topic consents; a non-material one only the
#: subscribers of ``NOTICE_TOPIC``.
POLICY_NOTICE = "policy_notice"
CAMPAIGN_KINDS = (POLICY_NOTICE, "newsletter", "notification")
NOTICE_TOPIC = "email_notifications"


#: Messages that go without a topic consent: they serve a request the user just made.
TRANSACTIONAL = frozenset({"confirmation", "preferences_link"})


@dataclass(frozen=True, slots=True)
class Recipient:
    erased: bool
    address: str | None
    verified: bool
    suppressed: bool
    state: ConsentState | None  # consent to the delivery's topic, if it has one
    already_notified: bool = False  # a policy notice: one of this version went before


@dataclass(frozen=True, slots=True)
class Notice:
    """What a policy notice needs to know of its policy version."""

    material: bool


def skip_reason(kind: str, topic_name: str | None, topic: Topic | None,
                who: Recipient, notice: Notice | None = None) -> SkipReason | None:
    """None when the message may go; otherwise the reason it must not.

    The order of the checks is the order of the reasons: ``notify.audience`` asks the
    same questions of a whole audience in SQL, in the same order, and a test holds the
    two to the same answer for every user of a mixed population.
    """
    if who.erased:
        return SkipReason.ERASED
    if not who.address:
        return SkipReason.NO_ADDRESS
    if who.suppressed:
        return SkipReason.SUPPRESSED
    if kind == "confirmation":
        # The one message a pending user receives (double opt-in).
        return None if who.state is ConsentState.PENDING else SkipReason.NOT_PENDING
    if kind in TRANSACTIONAL:
        return None
    if kind == POLICY_NOTICE:
        if who.already_notified:
            return SkipReason.ALREADY_NOTIFIED
        if notice is not None and notice.material:
            return None if who.verified else SkipReason.UNVERIFIED
        # A change that does not affect users' rights goes like any topic mail: only to
        # those who asked for email notifications (and it is posted on /policy).
    if topic_name is not None and topic is None:
        return SkipReason.UNKNOWN_TOPIC
    if topic is None:
        return SkipReason.NOT_SUBSCRIBED  # only transactional mail goes without a topic
    if who.state is not ConsentState.SUBSCRIBED:
        return SkipReason.NOT_SUBSCRIBED
    if not who.verified:
        return SkipReason.UNVERIFIED
    return None
