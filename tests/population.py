"""A mixed population of users, written straight to the database (bulk, so thousands are
quick), and the pure eligibility rule's answer for each of them."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from notify import eligibility, store
from notify.consent import ConsentState
from notify.models import AddressKind, Consent, Suppression, User

#: One profile per user, in turn: what the rules must do with each is in the tests.
PROFILES = (
    "subscribed",  # newsletter and email notifications, verified
    "unverified",  # subscribed, the address not verified
    "pending",  # asked, not confirmed (double opt-in)
    "unsubscribed",  # withdrew both topics
    "never_asked",  # no consent row at all, and no phone
    "suppressed",  # subscribed, but the address hard-bounced
    "erased",  # erased: no contact data, a hashed id
    "no_email",  # subscribed by phone only
    "opted_out_all",  # withdrew every topic, verified address
    "subscribed_de",  # like subscribed, German
)
TOPICS = ("newsletter", "email_notifications", "sms_notifications")


async def populate(count: int, hash_key: bytes, prefix: str = "u",
                   cycle: tuple[str, ...] = PROFILES) -> dict[str, str]:
    """``count`` users cycling through ``cycle``; returns external id -> profile."""
    now = store.now()
    users, profiles = [], {}
    for i in range(count):
        profile = cycle[i % len(cycle)]
        external = f"{prefix}{i:06d}"
        profiles[external] = profile
        email = None if profile in ("erased", "no_email") else f"{external}@example.com"
        phone = (f"+4915{i % 10_000_000:08d}" if profile not in ("erased", "never_asked")
                 else None)
        users.append(User(
            external_id=external if profile != "erased" else f"erased:{external}",
            handle=store.new_handle(),
            email=email, email_verified=profile != "unverified",
            email_hash=store.address_hash(hash_key, AddressKind.EMAIL, email) if email else None,
            phone=phone, phone_verified=True,
            phone_hash=store.address_hash(hash_key, AddressKind.PHONE, phone) if phone else None,
            country="DE" if phone else None,
            locale="de" if profile == "subscribed_de" else "en",
            erased_at=now if profile == "erased" else None,
            created_at=now - timedelta(days=i % 30)))
    await User.bulk_create(users, batch_size=1000)
    ids = dict(await User.filter(external_id__startswith=prefix)
               .values_list("external_id", "id"))
    ids.update(dict(await User.filter(external_id__startswith=f"erased:{prefix}")
                    .values_list("external_id", "id")))
    consents, suppressions = [], []
    for i in range(count):
        external = f"{prefix}{i:06d}"
        profile = profiles[external]
        state = {
            "subscribed": ConsentState.SUBSCRIBED, "unverified": ConsentState.SUBSCRIBED,
            "pending": ConsentState.PENDING, "unsubscribed": ConsentState.UNSUBSCRIBED,
            "suppressed": ConsentState.SUBSCRIBED, "no_email": ConsentState.SUBSCRIBED,
            "opted_out_all": ConsentState.UNSUBSCRIBED, "subscribed_de": ConsentState.SUBSCRIBED,
            "erased": ConsentState.UNSUBSCRIBED,
        }.get(profile)
        user_id = ids[external if profile != "erased" else f"erased:{external}"]
        if state is not None:
            for topic in TOPICS:
                consents.append(Consent(user_id=user_id, topic=topic, state=state,
                                        updated_at=now))
        if profile == "suppressed":
            suppressions.append(Suppression(
                kind=AddressKind.EMAIL,
                address_hash=store.address_hash(hash_key, AddressKind.EMAIL,
                                                f"{external}@example.com"),
                reason="hard_bounce"))
    await Consent.bulk_create(consents, batch_size=1000)
    await Suppression.bulk_create(suppressions, batch_size=1000)
    return profiles


async def pure_reasons(hash_key: bytes, kind: str, topic_name: str | None,
                       topic, notice: eligibility.Notice | None = None,  # noqa: ANN001
                       channel: str = "email") -> dict[int, str | None]:
    """Each user's reason by the pure rule, asked one user at a time as the postman does."""
    found = {}
    suppressed = set(await Suppression.all().values_list("address_hash", flat=True))
    states = {}
    if topic_name is not None:
        states = dict(await Consent.filter(topic=topic_name).values_list("user_id", "state"))
    for user in await User.all():
        address = user.phone if channel == "sms" else user.email
        verified = user.phone_verified if channel == "sms" else user.email_verified
        kind_of = AddressKind.PHONE if channel == "sms" else AddressKind.EMAIL
        who = eligibility.Recipient(
            erased=user.erased_at is not None, address=address, verified=verified,
            suppressed=bool(address) and store.address_hash(hash_key, kind_of, address)
            in suppressed,
            state=ConsentState(states[user.id]) if user.id in states else None)
        reason = eligibility.skip_reason(kind, topic_name, topic, who, notice)
        found[user.id] = None if reason is None else str(reason)
    return found


def tally(reasons: dict[int, str | None]) -> tuple[int, dict[str, int]]:
    counts = Counter(reasons.values())
    eligible = counts.pop(None, 0)
    return eligible, dict(counts)
