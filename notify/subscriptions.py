"""Consent requests with what they set in motion: a request to subscribe to a double
opt-in topic becomes ``pending`` and sends the confirmation email, and nothing but that
confirmation goes to a pending user.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from notify import store
from notify.consent import Change, ConsentState
from notify.errors import InvalidRequest
from notify.models import ConsentEvent, User
from notify.postman import Postman
from notify.settings import Channel, Settings, Topic
from notify.tokens import Purpose

log = logging.getLogger(__name__)


def confirm_lifetime(settings: Settings) -> dict[Purpose, timedelta]:
    return {Purpose.CONFIRM: timedelta(days=settings.pending_days)}


async def request(
    postman: Postman,
    user: User,
    topic: Topic,
    subscribe: bool,
    evidence: store.Evidence,
) -> tuple[Change, ConsentEvent | None]:
    """Apply a consent request; send the confirmation when it leaves the topic pending."""
    settings = postman.settings
    needs_confirmation = subscribe and topic.double_opt_in
    if needs_confirmation and topic.channel is Channel.EMAIL and not user.email:
        raise InvalidRequest(f"{topic.name} needs a confirmed email address and this user has "
                             "none", field="topic")
    change, event = await store.change_consent(
        user, topic, subscribe, evidence, default_policy=settings.policy_version)
    state = change.to_state or change.from_state
    if subscribe and state is ConsentState.PENDING:
        # Also when it was pending already: asking again usually means the mail was lost.
        await send_now(postman, user, "confirmation", topic=topic.name)
    return change, event


async def send_preferences_link(postman: Postman, user: User) -> None:
    await send_now(postman, user, "preferences_link")


async def send_now(postman: Postman, user: User, kind: str, *, topic: str | None = None
                   ) -> None:
    """Queue a message the user is waiting for, and try it at once. If the relay is away
    the delivery stays queued and the sender retries it: nothing is lost."""
    if not user.email:
        return
    delivery = await postman.enqueue(user, kind, topic=topic)
    try:
        await postman.send_now(delivery)
    except Exception:
        log.exception("delivery %s: first attempt failed; the sender will retry", delivery.id)
