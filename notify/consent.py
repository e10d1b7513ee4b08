"""Consent rules: the pure core. Imports nothing from the ORM, aiohttp or channel libraries.

The privacy policy (§2.5) makes consent the legal basis for e-mail notifications, SMS
notifications and newsletters, and promises that users can unsubscribe at any time. These
rules decide what a requested change does; the store (``notify.store``) writes the result
and its ledger event in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from notify.errors import InvalidRequest
from notify.settings import Topic


class ConsentState(StrEnum):
    SUBSCRIBED = "subscribed"  # consent given (and confirmed, where the topic asks for it)
    PENDING = "pending"  # asked to subscribe; waiting for the double opt-in confirmation
    UNSUBSCRIBED = "unsubscribed"  # consent refused or withdrawn


class ConsentSource(StrEnum):
    """How a change reached us. The same words are in the database, the logs and the API."""

    PROFILE_SETTINGS = "profile_settings"  # the main app's Profile Settings page (§2.5)
    ONE_CLICK = "one_click"  # RFC 8058 List-Unsubscribe-Post from a mail client
    UNSUBSCRIBE_PAGE = "unsubscribe_page"  # the button on our unsubscribe page
    PREFERENCE_CENTER = "preference_center"  # our preference page
    MAILTO = "mailto"  # mail to the List-Unsubscribe mailto address
    SMS_KEYWORD = "sms_keyword"  # STOP/START replies and carrier opt-outs
    SUPPORT = "support"  # "by contacting us" (§2.5): staff acting on the user's request
    IMPORT = "import"  # consents carried over from an earlier system, with their evidence
    CONFIRMATION = "confirmation"  # the double opt-in confirmation link
    BOUNCE = "bounce"  # the address stopped accepting mail
    COMPLAINT = "complaint"  # the user marked a message as spam
    API = "api"  # any other change made through the HTTP API
    EXPIRY = "expiry"  # a pending request was not confirmed in time (settings: pending_days)


#: Sources an API key may name in ``PUT /v1/users/{id}/consents/{topic}``. The others are
#: recorded only by the endpoint that owns them (a one-click POST, a bounce, ...), so a
#: caller cannot forge evidence of, say, a confirmation.
API_SOURCES: dict[str, frozenset[ConsentSource]] = {
    "app": frozenset({ConsentSource.PROFILE_SETTINGS, ConsentSource.API}),
    "admin": frozenset(
        {
            ConsentSource.PROFILE_SETTINGS,
            ConsentSource.API,
            ConsentSource.SUPPORT,
            ConsentSource.IMPORT,
        }
    ),
}

#: Sources that may turn a request to subscribe straight into ``subscribed`` on a
#: double-opt-in topic: the confirmation itself, and imports, which carry the evidence of
#: a confirmation made in the earlier system.
CONFIRMING_SOURCES = frozenset({ConsentSource.CONFIRMATION, ConsentSource.IMPORT})


@dataclass(frozen=True, slots=True)
class Change:
    """What a request does: ``to_state`` is None when it changes nothing."""

    from_state: ConsentState | None
    to_state: ConsentState | None

    @property
    def is_change(self) -> bool:
        return self.to_state is not None


def decide(
    topic: Topic,
    current: ConsentState | None,
    subscribe: bool,
    source: ConsentSource,
    requested: ConsentState | None = None,
    *,
    restoring: bool = False,
) -> Change:
    """Decide the new state for a request to (un)subscribe ``topic``.

    ``current`` None means the user was never asked, which counts as not subscribed:
    consent is opt-in. ``requested`` lets an import set ``pending`` explicitly.
    ``restoring`` is an "undo" moments after an unsubscribe: it puts back a subscription
    that had been confirmed, without a new confirmation.
    """
    if not subscribe:
        # Withdrawal always wins and is always allowed (§2.5, GDPR Art. 7(3)).
        target = ConsentState.UNSUBSCRIBED
    elif current is ConsentState.SUBSCRIBED:
        # Subscribing again never downgrades a confirmed subscription to pending.
        return Change(current, None)
    elif restoring:
        target = ConsentState.SUBSCRIBED
    elif _needs_confirmation(topic, source, requested):
        target = ConsentState.PENDING
    elif source is ConsentSource.CONFIRMATION and current is not ConsentState.PENDING:
        # A confirmation link confirms a pending request, nothing else.
        raise InvalidRequest("there is no pending subscription to confirm", field="topic")
    else:
        target = ConsentState.SUBSCRIBED
    if target is current:
        return Change(current, None)
    return Change(current, target)


def _needs_confirmation(topic: Topic, source: ConsentSource,
                        requested: ConsentState | None) -> bool:
    if source is ConsentSource.IMPORT:
        # An import may carry a request that was still waiting for confirmation.
        return requested is ConsentState.PENDING
    return topic.double_opt_in and source not in CONFIRMING_SOURCES


def is_subscribed(state: ConsentState | None) -> bool:
    return state is ConsentState.SUBSCRIBED
