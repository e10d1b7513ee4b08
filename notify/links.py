"""The links we put in messages and hand to the main app, all under NOTIFY_PUBLIC_URL."""

from __future__ import annotations

from dataclasses import dataclass

from notify import store, tokens
from notify.models import User
from notify.settings import Settings
from notify.tokens import ALL_TOPICS, AddressPurpose, Link, Purpose

ONE_CLICK_BODY = "List-Unsubscribe=One-Click"


@dataclass(frozen=True, slots=True)
class Links:
    preferences: str
    unsubscribe: dict[str, str]  # per topic, and "*" for everything

    def list_unsubscribe(self, topic: str = ALL_TOPICS) -> str:
        """The List-Unsubscribe header value (RFC 2369) for mail about ``topic``."""
        return f"<{self.unsubscribe.get(topic, self.unsubscribe[ALL_TOPICS])}>"


def url(settings: Settings, path: str, link: Link) -> str:
    return f"{settings.public_url}/{path}/{tokens.sign(link, settings.secret_keys)}"


async def for_user(settings: Settings, user: User, delivery: int | None = None) -> Links:
    handle = await store.handle_for(user)
    unsubscribe = {
        name: url(settings, "u", Link(handle, Purpose.UNSUBSCRIBE, name, delivery))
        for name in (*settings.topics, ALL_TOPICS)
    }
    preferences = url(settings, "preferences", Link(handle, Purpose.PREFERENCES))
    return Links(preferences=preferences, unsubscribe=unsubscribe)


async def for_message(settings: Settings, user: User, topic: str | None,
                      delivery: int) -> tuple[str, str | None]:
    """The preference link and the topic's unsubscribe link of one message: the two the
    postman puts in it (signing every topic's link per message cost a third of a token
    each, for nothing)."""
    handle = await store.handle_for(user)
    preferences = url(settings, "preferences", Link(handle, Purpose.PREFERENCES))
    unsubscribe = (url(settings, "u", Link(handle, Purpose.UNSUBSCRIBE, topic, delivery))
                   if topic is not None else None)
    return preferences, unsubscribe


async def confirmation(settings: Settings, user: User, topic: str) -> str:
    handle = await store.handle_for(user)
    return url(settings, "confirm", Link(handle, Purpose.CONFIRM, topic))


def verp_address(settings: Settings, delivery: int) -> str:
    """The Return-Path of a delivery: bounces for it come back here (VERP)."""
    token = tokens.address_token(AddressPurpose.BOUNCE, delivery, settings.secret_keys)
    return f"bounces+{token}@{settings.mail_domain}"


def mailto_unsubscribe(settings: Settings, delivery: int) -> str:
    """The List-Unsubscribe mailto address of a delivery (RFC 2369)."""
    token = tokens.address_token(AddressPurpose.UNSUBSCRIBE, delivery, settings.secret_keys)
    return f"unsubscribe+{token}@{settings.mail_domain}"
