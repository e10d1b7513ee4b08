"""What support staff do for a user who contacts us (privacy policy §2.5, "by contacting
us"): find the user, withdraw a topic on their behalf, and search and add suppressions.

The admin API (``notify.web.support_api``) and the console (``notify.console``) both call
these functions, so neither can do what the other could not; each change is written to
the admin audit log in the same transaction as the change itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from tortoise.transactions import in_transaction

from notify import audit, store
from notify.consent import Change, ConsentSource
from notify.errors import InvalidRequest, NotFound
from notify.models import AddressKind, Suppression, SuppressionReason, User
from notify.settings import Settings

#: The word that names every topic at once, as in ``notify consents withdraw USER all``.
ALL = "all"


async def find_user(query: str) -> User:
    """A user by the main app's id or by email address (as stored: lower case)."""
    text = query.strip()
    if not text:
        raise InvalidRequest("give a user id or an email address", field="query.q")
    user = await User.get_or_none(external_id=text)
    if user is None and "@" in text:
        user = await User.get_or_none(email=text.lower())
    if user is None or user.erased_at is not None:
        raise NotFound(f"no user with the id or email {text!r}", field="query.q")
    return user


@dataclass(frozen=True, slots=True)
class Withdrawn:
    topic: str
    change: Change


async def withdraw(settings: Settings, user: User, topic: str, note: str,
                   key_id: str) -> list[Withdrawn]:
    """Withdraw ``topic`` (or every topic, ``all``) for the user, source ``support``, with
    the signed-in key as actor and a required note saying why (the user's request)."""
    note = note.strip()
    if not note:
        raise InvalidRequest("a note is required: say what the user asked for and where",
                             field="body.note")
    if topic != ALL and topic not in settings.topics:
        raise InvalidRequest(f"unknown topic {topic!r}; topics are: "
                             f"{', '.join(settings.topics)}, or {ALL}", field="body.topic")
    names = list(settings.topics) if topic == ALL else [topic]
    evidence = store.Evidence(source=ConsentSource.SUPPORT, actor=key_id, note=note)
    done = []
    async with in_transaction():
        for name in names:
            change, _ = await store.change_consent(user, settings.topics[name], False, evidence,
                                                   default_policy=settings.policy_version)
            done.append(Withdrawn(name, change))
        # The user's internal number, not their id: the audit log outlives an erasure.
        await audit.record(key_id, "consent.withdraw", f"user:{user.id}",
                           {"topics": names, "changed": sum(w.change.is_change for w in done)})
    return done


async def suppressions(settings: Settings, address: str | None = None, *,
                       limit: int = 50) -> list[Suppression]:
    """The newest suppressions, or those of one address (found by its keyed hash: the list
    holds no addresses, so it can only be searched by a whole address)."""
    query = Suppression.all()
    if address is not None:
        query = query.filter(address_hash__in=[
            store.address_hash(settings.hash_key, kind, address) for kind in AddressKind])
    return await query.order_by("-id").limit(limit)


def address_kind(address: str) -> AddressKind:
    return AddressKind.PHONE if address.startswith("+") else AddressKind.EMAIL


async def suppress(settings: Settings, address: str, note: str, key_id: str) -> bool:
    """Block an address on request (reason ``manual``); False when it was blocked already."""
    note = note.strip()
    if not note:
        raise InvalidRequest("a reason is required: say who asked and why", field="body.note")
    kind = address_kind(address)
    async with in_transaction():
        added = await store.suppress(settings.hash_key, kind, address,
                                     SuppressionReason.MANUAL, note)
        if added:
            await audit.record(key_id, "suppression.add", f"suppression:{kind.value}",
                               {"kind": kind.value})
    return added
