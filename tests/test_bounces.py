"""Bounces, complaints and mailto unsubscribes (notify.bounces), and the bounce webhook.

The bounce score follows Mailman's scheme: soft bounces add 0.5 at most once a day, a
stale score starts again from zero, the threshold suppresses; hard bounces suppress at once.
Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from support import ADMIN, APP, snapshot

from notify import bounces, store
from notify.consent import ConsentSource, ConsentState
from notify.models import (
    AddressKind,
    BounceScore,
    Consent,
    ConsentEvent,
    Delivery,
    DeliveryStatus,
    Suppression,
    User,
)
from notify.postman import message_id

EMAIL = "alice@example.com"




async def make_delivery(orm, topic: str | None = "newsletter",
                        status: DeliveryStatus = DeliveryStatus.SENT) -> Delivery:
    with orm:
        user = await User.get(external_id="alice")
        now = store.now()
        return await Delivery.create(user_id=user.id, channel="email",
                                     kind="newsletter" if topic else "notification",
                                     topic=topic, status=status, next_attempt_at=now,
                                     deadline=now + timedelta(days=1))


@pytest.fixture
async def delivery(orm, alice) -> Delivery:
    return await make_delivery(orm)


async def hold(settings, orm, *names: str, external_id: str = "alice") -> None:
    """Subscribe the user to ``names`` (an import: no confirmation round trip)."""
    with orm:
        user = await User.get(external_id=external_id)
        evidence = store.Evidence(source=ConsentSource.IMPORT, actor="test", note="test")
        for name in names:
            await store.change_consent(user, settings.topics[name], True, evidence,
                                       default_policy=settings.policy_version)


async def states(orm, external_id: str = "alice") -> dict[str, str]:
    with orm:
        user = await User.get(external_id=external_id)
        return {c.topic: c.state for c in await Consent.filter(user_id=user.id)}


async def score(settings, orm, email: str = EMAIL) -> BounceScore | None:
    digest = store.address_hash(settings.hash_key, AddressKind.EMAIL, email)
    with orm:
        return await BounceScore.get_or_none(address_hash=digest)


async def age_score(settings, orm, days: float, email: str = EMAIL,
                    value: float | None = None) -> None:
    """Pretend the address last bounced ``days`` ago (optionally with score ``value``)."""
    digest = store.address_hash(settings.hash_key, AddressKind.EMAIL, email)
    changes: dict = {"last_bounce_at": store.now() - timedelta(days=days)}
    if value is not None:
        changes["score"] = value
    with orm:
        await BounceScore.filter(address_hash=digest).update(**changes)


async def suppression(settings, orm, email: str = EMAIL) -> Suppression | None:
    digest = store.address_hash(settings.hash_key, AddressKind.EMAIL, email)
    with orm:
        return await Suppression.get_or_none(kind=AddressKind.EMAIL, address_hash=digest)


async def fresh(orm, delivery: Delivery) -> Delivery:
    with orm:
        return await Delivery.get(id=delivery.id)


async def soft(settings, orm, delivery=None, email: str = EMAIL) -> str:
    with orm:
        return await bounces.record_bounce(settings, delivery, email, permanent=False,
                                           detail="452 4.2.2 mailbox full")


# --- Soft bounces: Mailman's score --------------------------------------------------------


async def test_soft_bounce_counts_once_a_day(settings, orm, delivery):
    assert await soft(settings, orm, delivery) == "scored"
    assert await soft(settings, orm, delivery) == "ignored"  # same day: nothing more
    assert (await score(settings, orm)).score == 0.5
    await age_score(settings, orm, days=1)
    assert await soft(settings, orm, delivery) == "scored"
    assert (await score(settings, orm)).score == 1.0
    assert await suppression(settings, orm) is None
    # A soft bounce leaves the delivery as it was: the relay may still deliver it.
    assert (await fresh(orm, delivery)).status == DeliveryStatus.SENT


async def test_stale_score_starts_again_from_zero(settings, orm, alice):
    assert settings.bounce_stale_days == 7
    await soft(settings, orm)
    await age_score(settings, orm, days=7.5, value=4.0)
    assert await soft(settings, orm) == "scored"
    assert (await score(settings, orm)).score == 0.5
    # Within the stale period the score keeps adding up.
    await age_score(settings, orm, days=6.5, value=2.0)
    await soft(settings, orm)
    assert (await score(settings, orm)).score == 2.5


async def test_reaching_the_threshold_suppresses(settings, orm, delivery):
    assert settings.bounce_threshold == 5
    await soft(settings, orm, delivery)
    await age_score(settings, orm, days=1, value=4.0)
    assert await soft(settings, orm, delivery) == "scored"  # 4.5
    assert await suppression(settings, orm) is None
    await age_score(settings, orm, days=1)
    assert await soft(settings, orm, delivery) == "suppressed"  # 5.0
    found = await suppression(settings, orm)
    assert (found.reason, found.note) == ("hard_bounce", "soft bounce score")
    with orm:
        assert await store.is_suppressed(settings.hash_key, AddressKind.EMAIL, "Alice@Example.com")


async def test_scores_are_per_address(settings, orm, alice):
    await soft(settings, orm, email="alice@example.com")
    assert await soft(settings, orm, email="bob@example.com") == "scored"
    assert (await score(settings, orm, "bob@example.com")).score == 0.5
    assert (await score(settings, orm, "alice@example.com")).score == 0.5


# --- Hard bounces -------------------------------------------------------------------------


async def test_hard_bounce_suppresses_at_once_and_marks_the_delivery(settings, orm, delivery):
    detail = "Status: 5.1.1; Diagnostic-Code: smtp; 550 5.1.1 <alice@example.com>: unknown"
    with orm:
        result = await bounces.record_bounce(settings, delivery, EMAIL, permanent=True,
                                             detail=detail)
    assert result == "suppressed"
    found = await suppression(settings, orm)
    assert found.reason == "hard_bounce"
    # The suppression outlives erasure: its note keeps the status, never the address.
    assert found.note == "hard bounce 5.1.1" and "alice" not in found.note
    row = await fresh(orm, delivery)
    assert (row.status, row.last_error) == (DeliveryStatus.BOUNCED, detail)
    assert delivery.status == DeliveryStatus.BOUNCED
    assert (await score(settings, orm)).score == 1.0  # counts toward the score too
    # Again (a retried DSN): nothing new, still one suppression.
    with orm:
        await bounces.record_bounce(settings, delivery, EMAIL, permanent=True, detail=detail)
        assert await Suppression.all().count() == 1


async def test_hard_bounce_at_send_time_leaves_a_failed_delivery_failed(settings, orm, alice):
    delivery = await make_delivery(orm, status=DeliveryStatus.FAILED)
    with orm:
        await Delivery.filter(id=delivery.id).update(last_error="550 5.1.1 user unknown")
        await bounces.record_bounce(settings, delivery, EMAIL, permanent=True,
                                    detail="550 5.1.1 user unknown")
    assert (await fresh(orm, delivery)).status == DeliveryStatus.FAILED
    assert await suppression(settings, orm) is not None


# --- Complaints ---------------------------------------------------------------------------


async def test_complaint_suppresses_and_withdraws_only_marketing(settings, orm, delivery):
    await hold(settings, orm, "newsletter", "email_notifications")
    with orm:
        result = await bounces.record_complaint(settings, delivery, EMAIL,
                                                "ARF abuse report by Yahoo!-Mail-Feedback/2.0")
    assert result == "suppressed"
    assert (await suppression(settings, orm)).reason == "complaint"
    assert await states(orm) == {"newsletter": "unsubscribed",
                                 "email_notifications": "subscribed"}
    with orm:
        event = await ConsentEvent.filter(topic="newsletter").order_by("-id").first()
        assert await ConsentEvent.filter(source=ConsentSource.COMPLAINT).count() == 1
    assert (event.source, event.actor, event.from_state, event.to_state) == (
        "complaint", "feedback-loop", "subscribed", "unsubscribed")
    assert event.note == "ARF abuse report by Yahoo!-Mail-Feedback/2.0"


async def test_complaint_finds_the_user_by_address_and_truncates_the_note(settings, orm, alice):
    await hold(settings, orm, "newsletter")
    with orm:
        await bounces.record_complaint(settings, None, "ALICE@example.com", "x" * 5000)
        event = await ConsentEvent.filter(source=ConsentSource.COMPLAINT).get()
    assert event.topic == "newsletter" and len(event.note) <= bounces.NOTE_LIMIT
    # A pending request is withdrawn too; a topic never asked about gets no event.
    assert await states(orm) == {"newsletter": "unsubscribed"}


async def test_complaint_about_an_unknown_address_only_suppresses(settings, orm, alice):
    with orm:
        assert await bounces.record_complaint(settings, None, "eve@example.org", "") \
            == "suppressed"
        assert await ConsentEvent.filter(source=ConsentSource.COMPLAINT).count() == 0
    assert (await suppression(settings, orm, "eve@example.org")).reason == "complaint"


# --- Mailto unsubscribes ------------------------------------------------------------------


async def test_mailto_withdraws_the_topic_of_the_delivery(settings, orm, delivery):
    await hold(settings, orm, "newsletter", "email_notifications")
    with orm:
        assert await bounces.record_mailto_unsubscribe(settings, delivery) == "withdrawn"
        assert await bounces.record_mailto_unsubscribe(settings, delivery) == "ignored"
        [event] = await ConsentEvent.filter(source=ConsentSource.MAILTO)
    assert (event.topic, event.to_state, event.actor) == ("newsletter",
                                                         ConsentState.UNSUBSCRIBED, "user")
    assert str(delivery.id) in event.note
    assert await states(orm) == {"newsletter": "unsubscribed",
                                 "email_notifications": "subscribed"}
    assert await suppression(settings, orm) is None  # unsubscribing is not a suppression


async def test_mailto_for_a_delivery_without_topic_withdraws_marketing(settings, orm, alice):
    await hold(settings, orm, "newsletter", "email_notifications")
    delivery = await make_delivery(orm, topic=None)
    with orm:
        assert await bounces.record_mailto_unsubscribe(settings, delivery) == "withdrawn"
    assert await states(orm) == {"newsletter": "unsubscribed",
                                 "email_notifications": "subscribed"}


# --- The webhook --------------------------------------------------------------------------

HOOK = "/webhooks/bounces"


async def test_webhook_hard_bounce_with_message_id(client, settings, orm, delivery):
    resp = await client.post(HOOK, headers=ADMIN, json={
        "type": "bounce", "email": EMAIL, "permanent": True, "detail": "550 5.1.1 no such user",
        "message_id": message_id(settings, delivery.id)})
    assert resp.status == 202, await resp.text()
    assert await resp.json() == {"result": "suppressed"}
    assert (await suppression(settings, orm)).reason == "hard_bounce"
    row = await fresh(orm, delivery)
    assert (row.status, row.last_error) == (DeliveryStatus.BOUNCED, "550 5.1.1 no such user")


async def test_webhook_message_id_must_match_the_email(client, settings, orm, delivery):
    before = await snapshot(orm)
    resp = await client.post(HOOK, headers=ADMIN, json={
        "type": "complaint", "email": "stranger@example.com",
        "message_id": message_id(settings, delivery.id)})
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["field"] == "body.email"
    assert await snapshot(orm) == before


async def test_webhook_soft_bounce_scores(client, settings, orm, delivery):
    body = {"type": "bounce", "email": "Alice@Example.com", "permanent": False,
            "message_id": message_id(settings, delivery.id).strip("<>")}
    for expected in ("scored", "ignored"):
        resp = await client.post(HOOK, headers=ADMIN, json=body)
        assert (resp.status, await resp.json()) == (202, {"result": expected})
    assert (await score(settings, orm)).score == 0.5
    assert (await fresh(orm, delivery)).status == DeliveryStatus.SENT


async def test_webhook_complaint(client, settings, orm, alice):
    await hold(settings, orm, "newsletter", "email_notifications")
    resp = await client.post(HOOK, headers=ADMIN, json={
        "type": "complaint", "email": EMAIL, "detail": "complaint via provider"})
    assert (resp.status, await resp.json()) == (202, {"result": "suppressed"})
    assert (await suppression(settings, orm)).reason == "complaint"
    assert await states(orm) == {"newsletter": "unsubscribed",
                                 "email_notifications": "subscribed"}


JSON = {"Content-Type": "application/json"}
GOOD = {"type": "bounce", "email": EMAIL, "permanent": True}
BAD = [
    # (name, headers, body, status, field at fault)
    ("no key", {}, GOOD, 401, None),
    ("app key", APP, GOOD, 403, None),
    ("not json", ADMIN, b"type=bounce", 400, "body"),
    ("not an object", ADMIN, [GOOD], 422, "body"),
    ("no type", ADMIN, {"email": EMAIL, "permanent": True}, 422, "body.type"),
    ("unknown type", ADMIN, {**GOOD, "type": "delivered"}, 422, "body.type"),
    ("no email", ADMIN, {"type": "bounce", "permanent": True}, 422, "body.email"),
    ("bad email", ADMIN, {**GOOD, "email": "alice@@example"}, 422, "body.email"),
    ("bounce without permanent", ADMIN, {"type": "bounce", "email": EMAIL}, 422,
     "body.permanent"),
    ("permanent as text", ADMIN, {**GOOD, "permanent": "true"}, 422, "body.permanent"),
    ("complaint with permanent", ADMIN, {"type": "complaint", "email": EMAIL,
                                         "permanent": True}, 422, "body.permanent"),
    ("unknown field", ADMIN, {**GOOD, "reason": "x"}, 422, "body.reason"),
    ("long detail", ADMIN, {**GOOD, "detail": "x" * 2001}, 422, "body.detail"),
    ("foreign message id", ADMIN, {**GOOD, "message_id": "<abc@gmail.com>"}, 422,
     "body.message_id"),
    ("forged message id", ADMIN, {**GOOD, "message_id": "<b1-aaaaaaaaaaaaaaaa@example.com>"},
     422, "body.message_id"),
]


@pytest.mark.parametrize(("headers", "body", "status", "field"),
                         [pytest.param(*case[1:], id=case[0]) for case in BAD])
async def test_webhook_bad_input_is_refused_and_changes_nothing(
        client, settings, orm, delivery, headers, body, status, field):
    await hold(settings, orm, "newsletter")
    before = await snapshot(orm)
    if isinstance(body, bytes):
        resp = await client.post(HOOK, data=body, headers={**headers, **JSON})
    else:
        resp = await client.post(HOOK, json=body, headers=headers)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    if field:
        assert field in [e["field"] for e in (await resp.json())["errors"]]
    assert await snapshot(orm) == before


async def test_webhook_message_id_of_a_missing_delivery_is_refused(client, settings, orm,
                                                                   delivery):
    before = await snapshot(orm)
    resp = await client.post(HOOK, headers=ADMIN, json={
        **GOOD, "message_id": message_id(settings, delivery.id + 1000)})
    assert resp.status == 422
    assert [e["field"] for e in (await resp.json())["errors"]] == ["body.message_id"]
    assert await snapshot(orm) == before
