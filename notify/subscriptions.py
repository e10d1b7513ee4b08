"""Consent requests with what they set in motion: a request to subscribe to a double
opt-in topic becomes ``pending`` and sends the confirmation email, and nothing but that
confirmation goes to a pending user.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from notify import i18n, links, mail, store
from notify.channels import DeliveryError, EmailChannel
from notify.consent import Change, ConsentState
from notify.errors import InvalidRequest
from notify.models import ConsentEvent, User
from notify.settings import Channel, Settings, Topic
from notify.tokens import Purpose

log = logging.getLogger(__name__)


def confirm_lifetime(settings: Settings) -> dict[Purpose, timedelta]:
    return {Purpose.CONFIRM: timedelta(days=settings.pending_days)}


async def request(
    settings: Settings,
    channel: EmailChannel,
    user: User,
    topic: Topic,
    subscribe: bool,
    evidence: store.Evidence,
) -> tuple[Change, ConsentEvent | None]:
    """Apply a consent request; send the confirmation when it leaves the topic pending."""
    needs_confirmation = subscribe and topic.double_opt_in
    if needs_confirmation and topic.channel is Channel.EMAIL and not user.email:
        raise InvalidRequest(f"{topic.name} needs a confirmed email address and this user has "
                             "none", field="topic")
    change, event = await store.change_consent(
        user, topic, subscribe, evidence, default_policy=settings.policy_version)
    state = change.to_state or change.from_state
    if subscribe and state is ConsentState.PENDING:
        # Also when it was pending already: asking again usually means the mail was lost.
        await send_confirmation(settings, channel, user, topic)
    return change, event


async def send_confirmation(settings: Settings, channel: EmailChannel, user: User,
                            topic: Topic) -> None:
    if not user.email:
        return
    footer_links = await links.for_user(settings, user)
    email = mail.Email(
        to=user.email, to_name=user.name, kind="confirmation", locale=i18n.choose(user.locale),
        context={"name": user.name, "topic_label": topic.label(user.locale),
                 "confirm_url": await links.confirmation(settings, user, topic.name),
                 "days": settings.pending_days},
        footer=mail.Footer(preferences_url=footer_links.preferences),
    )
    await _send(settings, channel, email)


async def send_preferences_link(settings: Settings, channel: EmailChannel, user: User) -> None:
    if not user.email:
        return
    footer_links = await links.for_user(settings, user)
    email = mail.Email(to=user.email, to_name=user.name, kind="preferences_link",
                       locale=i18n.choose(user.locale), context={},
                       footer=mail.Footer(preferences_url=footer_links.preferences))
    await _send(settings, channel, email)


async def _send(settings: Settings, channel: EmailChannel, email: mail.Email) -> None:
    message = mail.build(email, settings)
    try:
        await channel.send(message)
    except DeliveryError as exc:
        # The consent change stands; the user can ask again from the preference page.
        log.warning("could not send %s email: %s", email.kind, exc.detail)
