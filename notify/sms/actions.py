"""What SMS replies and Twilio's error codes do to consent and suppressions.

Shared by the courier (errors when sending), the status webhook (errors reported later)
and the inbound webhook (keywords). Consent changes go through ``store.change_consent``,
so each one has its ledger event with source ``sms_keyword`` and the evidence in the note.
"""

from __future__ import annotations

import logging

from notify import store
from notify.consent import ConsentSource, ConsentState
from notify.models import AddressKind, Suppression, SuppressionReason, User
from notify.settings import Channel, Settings, Topic
from notify.sms import mask

log = logging.getLogger(__name__)

#: Twilio error codes that say something about the recipient's number.
OPTED_OUT = 21610  # the recipient replied STOP to this sender; Twilio will not send
INVALID_NUMBER = frozenset({21211, 21614})  # not a valid number; not a mobile number

#: The default SMS topic, subscribed by a START from someone no keyword had opted out.
DEFAULT_TOPIC = "sms_notifications"


def sms_topics(settings: Settings) -> list[Topic]:
    return [t for t in settings.topics.values() if t.channel is Channel.SMS]


async def withdraw(settings: Settings, user: User, note: str) -> bool:
    """Withdraw every SMS topic: a STOP stops all texts from our sender, as the carrier
    does. Returns whether any consent changed (so a confirmation goes out at most once)."""
    evidence = store.Evidence(source=ConsentSource.SMS_KEYWORD, actor="sms", note=note)
    changed = False
    for topic in sms_topics(settings):
        change, _ = await store.change_consent(user, topic, False, evidence,
                                               default_policy=settings.policy_version)
        changed |= change.is_change
    return changed


async def resubscribe(settings: Settings, user: User, note: str) -> bool:
    """START: restore the SMS topics a keyword withdrew; if none, subscribe the default
    SMS topic. The reply comes from the phone itself, which proves the number is theirs,
    so a restored subscription needs no new confirmation. Lifts a carrier opt-out."""
    evidence = store.Evidence(source=ConsentSource.SMS_KEYWORD, actor="sms", note=note)
    restore = []
    for topic in sms_topics(settings):
        last = await store.last_event(user, topic.name)
        if (last is not None and last.source == ConsentSource.SMS_KEYWORD
                and last.to_state == ConsentState.UNSUBSCRIBED
                and last.from_state == ConsentState.SUBSCRIBED):
            restore.append(topic)
    if not restore and DEFAULT_TOPIC in settings.topics:
        restore = [settings.topics[DEFAULT_TOPIC]]
    changed = False
    for topic in restore:
        change, _ = await store.change_consent(user, topic, True, evidence,
                                               default_policy=settings.policy_version,
                                               restoring=True)
        changed |= change.is_change
    if user.phone:
        changed |= await lift_carrier_opt_out(settings, user.phone)
    return changed


async def lift_carrier_opt_out(settings: Settings, phone: str) -> bool:
    """Remove a carrier opt-out suppression (only that reason: an invalid number or a
    block by support stays)."""
    digest = store.address_hash(settings.hash_key, AddressKind.PHONE, phone)
    removed = await Suppression.filter(kind=AddressKind.PHONE, address_hash=digest,
                                       reason=SuppressionReason.CARRIER_OPT_OUT).delete()
    if removed:
        log.info("carrier opt-out of %s lifted by START", mask(phone))
    return bool(removed)


async def apply_error_code(settings: Settings, user: User | None, phone: str | None,
                           code: int | None, evidence: str) -> None:
    """Act on a Twilio error code about the recipient (at send time or in a callback)."""
    if not phone or code is None:
        return
    if code == OPTED_OUT:
        await store.suppress(settings.hash_key, AddressKind.PHONE, phone,
                             SuppressionReason.CARRIER_OPT_OUT, note=evidence)
        if user is not None and user.erased_at is None:
            await withdraw(settings, user, f"Twilio error 21610 (recipient replied STOP); "
                                           f"{evidence}")
        log.info("%s opted out at the carrier: suppressed", mask(phone))
    elif code in INVALID_NUMBER:
        await store.suppress(settings.hash_key, AddressKind.PHONE, phone,
                             SuppressionReason.INVALID_NUMBER, note=evidence)
        log.info("%s is not a usable mobile number (Twilio %s): suppressed", mask(phone),
                 code)
