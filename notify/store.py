"""Reading and writing users, consents and the ledger. Every consent change and its ledger
event are written in one transaction, so the state always equals the ledger's last word.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers
from tortoise import connections
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from notify.consent import Change, ConsentSource, ConsentState, decide
from notify.errors import Conflict, InvalidRequest, NotFound
from notify.models import (
    AddressKind,
    Campaign,
    Consent,
    ConsentEvent,
    Delivery,
    PolicyVersion,
    Suppression,
    User,
)
from notify.settings import Channel, Topic, TopicKind

#: User fields the API and the importer may set.
USER_FIELDS = ("email", "email_verified", "phone", "phone_verified", "locale", "time_zone", "name",
               "country")
USER_DEFAULTS: dict[str, Any] = {
    "email": None,
    "email_verified": False,
    "phone": None,
    "phone_verified": False,
    "locale": "en",
    "time_zone": None,
    "name": None,
    "country": None,
}


@dataclass(frozen=True, slots=True)
class Evidence:
    """Who made a consent change and how; recorded in the ledger with it."""

    source: ConsentSource
    actor: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    note: str | None = None
    occurred_at: datetime | None = None
    policy_version: str | None = None
    delivery_id: int | None = None  # the message whose link or reply made the change


def now() -> datetime:
    return datetime.now(UTC)


def address_hash(hash_key: bytes, kind: AddressKind, address: str) -> str:
    """Keyed hash of an address: suppressions keep working after the address is erased."""
    kind = AddressKind(kind)
    normalized = address.strip().lower() if kind is AddressKind.EMAIL else address.strip()
    message = f"{kind.value}:{normalized}".encode()
    return hmac.new(hash_key, message, hashlib.sha256).hexdigest()


def erased_id(hash_key: bytes, external_id: str) -> str:
    """What an erased user's id becomes: whoever presents the old id can find the record
    (to prove its consent history), but the record itself no longer names the person."""
    digest = hmac.new(hash_key, f"user:{external_id}".encode(), hashlib.sha256).hexdigest()
    return f"erased:{digest}"


async def is_erased(external_id: str, hash_key: bytes) -> bool:
    return await User.filter(external_id=erased_id(hash_key, external_id)).exists()


async def get_user(external_id: str) -> User:
    user = await User.get_or_none(external_id=external_id)
    if user is None:
        raise NotFound(f"no user with id {external_id!r}", field="path.id")
    return user


async def save_user(
    external_id: str, values: Mapping[str, Any], *, replace: bool, hash_key: bytes
) -> tuple[User, bool]:
    """Create or update a user. ``replace`` resets every field not given to its default.

    Returns the user and whether it was created. An email or phone that belongs to another
    user is a :class:`Conflict`; the unique indexes make that hold under concurrency too.
    The keyed hashes of the addresses and the country follow the addresses.
    """
    fields = {**(USER_DEFAULTS if replace else {}), **values}
    try:
        async with in_transaction():
            user = await User.select_for_update().get_or_none(external_id=external_id)
            await _check_addresses_free(user, fields)
            if user is None:
                user = User(external_id=external_id, handle=new_handle(),
                            **{**USER_DEFAULTS, **fields})
                _derive(user, hash_key)
                await user.save()
                return user, True
            if fields:
                user.update_from_dict(fields)
                _derive(user, hash_key)
                await user.save()
            return user, False
    except IntegrityError:
        raise Conflict("the email or phone belongs to another user, or the user was just "
                       "created by a concurrent request; retry") from None


def _derive(user: User, hash_key: bytes) -> None:
    """Fill in what follows from the addresses: their keyed hashes, and the country."""
    user.email_hash = address_hash(hash_key, AddressKind.EMAIL, user.email) if user.email \
        else None
    user.phone_hash = address_hash(hash_key, AddressKind.PHONE, user.phone) if user.phone \
        else None
    if user.country is None and user.phone:
        region = phonenumbers.region_code_for_number(phonenumbers.parse(user.phone))
        user.country = region if region and region != "ZZ" else None


async def _check_addresses_free(user: User | None, fields: Mapping[str, Any]) -> None:
    for name in ("email", "phone"):
        address = fields.get(name)
        if address is None:
            continue
        owner = await User.filter(**{name: address}).only("id").first()
        if owner is not None and (user is None or owner.id != user.id):
            raise Conflict(f"this {name} belongs to another user", field=f"body.{name}")


async def policy_version_in_force(default: str) -> str:
    """The newest published version already in effect, else the configured one."""
    latest = (
        await PolicyVersion.filter(effective_at__lte=now())
        .order_by("-effective_at", "-id")
        .only("version")
        .first()
    )
    return latest.version if latest else default


async def consent_states(user: User) -> dict[str, Consent]:
    return {c.topic: c for c in await Consent.filter(user_id=user.id)}


async def change_consent(
    user: User,
    topic: Topic,
    subscribe: bool,
    evidence: Evidence,
    *,
    default_policy: str,
    requested: ConsentState | None = None,
    restoring: bool = False,
) -> tuple[Change, ConsentEvent | None]:
    """Apply a consent request; writes the state and its ledger event in one transaction."""
    if user.erased_at is not None:
        raise InvalidRequest("this user was erased", field="path.id")
    policy = evidence.policy_version or await policy_version_in_force(default_policy)
    for attempt in range(2):
        try:
            return await _change_once(user, topic, subscribe, evidence, policy, requested,
                                      restoring)
        except IntegrityError:
            # Two first-ever requests for the same topic raced to insert its row; the loser
            # retries once and now sees the winner's row under the lock.
            if attempt:
                raise
    raise AssertionError("unreachable")


async def _change_once(
    user: User,
    topic: Topic,
    subscribe: bool,
    evidence: Evidence,
    policy: str,
    requested: ConsentState | None,
    restoring: bool,
) -> tuple[Change, ConsentEvent | None]:
    async with in_transaction():
        row = (
            await Consent.select_for_update()
            .filter(user_id=user.id, topic=topic.name)
            .first()
        )
        current = ConsentState(row.state) if row else None
        change = decide(topic, current, subscribe, evidence.source, requested,
                        restoring=restoring)
        if change.to_state is None:
            return change, None
        when = now()
        if row is None:
            await Consent.create(user_id=user.id, topic=topic.name, state=change.to_state,
                                 updated_at=when)
        else:
            row.state = change.to_state
            row.updated_at = when
            await row.save(update_fields=["state", "updated_at"])
        event = await ConsentEvent.create(
            user_id=user.id,
            topic=topic.name,
            from_state=change.from_state,
            to_state=change.to_state,
            source=evidence.source,
            actor=evidence.actor,
            ip=evidence.ip,
            user_agent=evidence.user_agent,
            delivery_id=evidence.delivery_id,
            policy_version=policy,
            note=evidence.note,
            occurred_at=evidence.occurred_at or when,
        )
        return change, event


async def list_events(user: User, *, limit: int, before: int | None) -> list[ConsentEvent]:
    """The user's ledger, newest first; ``before`` is the id cursor of the next page."""
    query = ConsentEvent.filter(user_id=user.id)
    if before is not None:
        query = query.filter(id__lt=before)
    return await query.order_by("-id").limit(limit)


async def suppressed_kinds(user: User, hash_key: bytes) -> list[Suppression]:
    hashes = []
    if user.email:
        hashes.append((AddressKind.EMAIL, address_hash(hash_key, AddressKind.EMAIL, user.email)))
    if user.phone:
        hashes.append((AddressKind.PHONE, address_hash(hash_key, AddressKind.PHONE, user.phone)))
    found: list[Suppression] = []
    for kind, digest in hashes:
        row = await Suppression.get_or_none(kind=kind, address_hash=digest)
        if row is not None:
            found.append(row)
    return found


async def erase_user(
    user: User, topics: Mapping[str, Topic], *, hash_key: bytes, actor: str, default_policy: str
) -> None:
    """Erase a user's contact data (GDPR Art. 17) and keep what proves and honours consent.

    Consents still held are withdrawn first, with ledger events, so the ledger shows when
    they ended. Then the contact data goes, the main app's id is replaced by a keyed hash,
    and the personal evidence in the ledger (IP, user agent, free-text note) is blanked:
    the one sanctioned change to ledger rows. Suppression hashes stay as they are.
    """
    if user.erased_at is not None:
        return
    last = await ConsentEvent.filter(user_id=user.id).order_by("-id").only("id").first()
    evidence = Evidence(source=ConsentSource.API, actor=actor, note="erasure")
    for name, consent in (await consent_states(user)).items():
        if consent.state != ConsentState.UNSUBSCRIBED:
            # A topic removed from the config since still gets its withdrawal recorded.
            topic = topics.get(name) or Topic(name, Channel.EMAIL, TopicKind.SERVICE, False,
                                              {"en": name})
            await change_consent(user, topic, False, evidence, default_policy=default_policy)
    # The suppressions of the user's addresses stay (they keep honouring "never again"),
    # but their free-text notes may name the person: those go, the reasons stay.
    hashes = [(kind, address_hash(hash_key, kind, address)) for kind, address in
              ((AddressKind.EMAIL, user.email), (AddressKind.PHONE, user.phone)) if address]
    async with in_transaction():
        for kind, digest in hashes:
            await Suppression.filter(kind=kind, address_hash=digest).update(note=None)
        user.update_from_dict({**USER_DEFAULTS, "email_hash": None, "phone_hash": None,
                               "erased_at": now(),
                               "external_id": erased_id(hash_key, user.external_id)})
        await user.save()
        if last is not None:
            await ConsentEvent.filter(user_id=user.id, id__lte=last.id).update(
                ip=None, user_agent=None, note=None
            )
        # Relay replies and template variables may quote the address or the name. Found
        # through the indexes deliveries have for this (models.Delivery): campaign by
        # campaign, and those outside any.
        campaigns = await Campaign.all().values_list("id", flat=True)
        for chunk in [campaigns[i:i + 1000] for i in range(0, len(campaigns), 1000)]:
            await Delivery.filter(campaign_id__in=chunk, user_id=user.id).update(
                last_error=None, context={}, provider_ref=None)
        await Delivery.filter(campaign_id__isnull=True, user_id=user.id).update(
            last_error=None, context={}, provider_ref=None)


def new_handle() -> str:
    return secrets.token_urlsafe(16)


async def give_handles(users: list[User]) -> None:
    """Give each of ``users`` a link handle if it has none (users written before handles
    were made at creation; new users get theirs in save_user)."""
    for user in users:
        await handle_for(user)


async def handle_for(user: User) -> str:
    """The user's opaque link handle, made on first use."""
    if user.handle is None:
        candidate = new_handle()
        # Only fills an empty handle: two requests racing both read back the winner's.
        await User.filter(id=user.id, handle__isnull=True).update(handle=candidate)
        user.handle = (await User.get(id=user.id).only("handle")).handle
    return user.handle


async def user_by_handle(handle: str) -> User | None:
    """The user a link names; None for erased users, whose links no longer act."""
    if not 1 <= len(handle) <= 32:
        return None
    user = await User.get_or_none(handle=handle)
    if user is None or user.erased_at is not None:
        return None
    return user


async def last_event(user: User, topic: str) -> ConsentEvent | None:
    return await ConsentEvent.filter(user_id=user.id, topic=topic).order_by("-id").first()


async def expire_pending(topics: Mapping[str, Topic], *, days: int, default_policy: str) -> int:
    """Withdraw pending requests older than ``days`` (source ``expiry``); returns how many."""
    cutoff = now() - timedelta(days=days)
    stale = await Consent.filter(
        state=ConsentState.PENDING, updated_at__lt=cutoff, topic__in=list(topics)
    ).limit(500)
    done = 0
    for consent in stale:
        topic = topics[consent.topic]
        user = await User.get(id=consent.user_id)
        evidence = Evidence(source=ConsentSource.EXPIRY, actor="notify",
                            note=f"not confirmed within {days} days")
        change, _ = await change_consent(user, topic, False, evidence,
                                         default_policy=default_policy)
        done += change.is_change
    return done


async def suppress(hash_key: bytes, kind: AddressKind, address: str, reason: str,
                   note: str | None = None) -> bool:
    """Block an address for good (keyed hash); returns False when it was blocked already."""
    digest = address_hash(hash_key, kind, address)
    try:
        async with in_transaction():
            if await Suppression.filter(kind=kind, address_hash=digest).exists():
                return False
            await Suppression.create(kind=kind, address_hash=digest, reason=reason, note=note)
    except IntegrityError:
        return False  # a concurrent suppression of the same address won
    return True


async def is_suppressed(hash_key: bytes, kind: AddressKind, address: str) -> bool:
    digest = address_hash(hash_key, kind, address)
    return await Suppression.filter(kind=kind, address_hash=digest).exists()


# -- the preference read (GET /v1/users/{id}/consents) ----------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentValue:
    """One consent row read as plain values (see :func:`consents_of`)."""

    state: ConsentState
    updated_at: datetime


#: The user's locale and consent rows in one round trip: a user without consents is one
#: row whose consent columns are NULL, an unknown id no row at all.
_CONSENTS_OF = ("SELECT u.locale, c.topic, c.state, c.updated_at FROM users u "
                "LEFT JOIN consents c ON c.user_id = u.id WHERE u.external_id = {}")
_CONSENTS_OF_SQL = {"sqlite": _CONSENTS_OF.format("?"), "postgres": _CONSENTS_OF.format("$1")}


async def consents_of(external_id: str) -> tuple[str, dict[str, ConsentValue]]:
    """The locale of the user with this id and their consent rows by topic; NotFound as
    :func:`get_user` for an unknown id.

    The hot read of the API (bench/preference_reads.py). ``get_user`` then
    ``consent_states`` cost two round trips plus tortoise's query building and model
    instances, most of a request's own time; this is one statement with its SQL fixed
    and its rows read as values. Nothing is cached: every call reads the committed state.
    """
    conn = connections.get("default")
    _, rows = await conn.execute_query(_CONSENTS_OF_SQL[conn.capabilities.dialect],
                                       [external_id])
    if not rows:
        raise NotFound(f"no user with id {external_id!r}", field="path.id")
    found = {}
    for _, topic, state, updated_at in rows:
        if topic is not None:
            found[topic] = ConsentValue(ConsentState(state), _consent_time(updated_at))
    return rows[0][0], found


_UPDATED_AT = Consent._meta.fields_map["updated_at"]


def _consent_time(value: datetime | str) -> datetime:
    """The datetime tortoise itself would make of the column's value. SQLite keeps text in
    ``str(datetime)`` form, which ``fromisoformat`` reads far faster than tortoise's
    parser; anything it cannot read goes to tortoise's."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = datetime.fromisoformat(value)
    return _UPDATED_AT.to_python_value(value)
