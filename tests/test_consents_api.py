"""Consent changes over HTTP and what the ledger records about them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from support import ADMIN, APP, snapshot

from notify.models import PolicyVersion


async def put_consent(client, topic, headers=APP, user="alice", **body):
    return await client.put(f"/v1/users/{user}/consents/{topic}", json=body, headers=headers)


async def ledger(client, user="alice", **params):
    resp = await client.get(f"/v1/users/{user}/consent-events", params=params, headers=APP)
    assert resp.status == 200
    return await resp.json()


async def test_consent_change_is_recorded_with_evidence(client, alice):
    resp = await put_consent(client, "email_notifications", subscribed=True,
                             source="profile_settings", ip="2001:db8::1",
                             user_agent="Mozilla/5.0 (X11)", note="checked the box")
    assert resp.status == 200
    body = await resp.json()
    assert (body["state"], body["subscribed"], body["changed"]) == ("subscribed", True, True)

    [event] = (await ledger(client))["events"]
    assert event["topic"] == "email_notifications"
    assert (event["from_state"], event["to_state"]) == (None, "subscribed")
    assert event["source"] == "profile_settings"
    assert event["actor"] == "user"
    assert event["ip"] == "2001:db8::1"
    assert event["user_agent"] == "Mozilla/5.0 (X11)"
    assert event["note"] == "checked the box"
    assert event["policy_version"] == "1.0"  # the configured default: nothing published yet


async def test_repeating_a_change_changes_nothing(client, alice):
    await put_consent(client, "sms_notifications", subscribed=True)
    resp = await put_consent(client, "sms_notifications", subscribed=True)
    assert (await resp.json())["changed"] is False
    assert len((await ledger(client))["events"]) == 1


async def test_withdrawal_is_recorded_against_previous_state(client, alice):
    await put_consent(client, "sms_notifications", subscribed=True)
    resp = await put_consent(client, "sms_notifications", subscribed=False)
    assert (await resp.json())["state"] == "unsubscribed"
    newest = (await ledger(client))["events"][0]
    assert (newest["from_state"], newest["to_state"]) == ("subscribed", "unsubscribed")


async def test_never_asked_withdrawal_is_recorded_too(client, alice):
    resp = await put_consent(client, "newsletter", subscribed=False)
    assert (await resp.json())["changed"] is True
    assert (await ledger(client))["events"][0]["from_state"] is None


async def test_double_opt_in_topic_becomes_pending_and_is_not_subscribed(client, alice):
    resp = await put_consent(client, "newsletter", subscribed=True)
    body = await resp.json()
    assert (body["state"], body["subscribed"]) == ("pending", False)


async def test_subscribing_again_never_downgrades_a_confirmed_subscription(client, alice):
    resp = await put_consent(client, "newsletter", subscribed=True, source="import",
                             headers=ADMIN)
    assert resp.status == 422  # an import must name its evidence
    await put_consent(client, "newsletter", subscribed=True, source="import", headers=ADMIN,
                      note="confirmed in the old CRM on 2024-05-01")
    resp = await put_consent(client, "newsletter", subscribed=True)
    body = await resp.json()
    assert (body["state"], body["changed"]) == ("subscribed", False)


async def test_policy_version_in_force_is_recorded(client, orm, alice):
    now = datetime.now(UTC)
    with orm:
        await PolicyVersion.create(version="2026-01", title="t", summary="s", url="https://x",
                                   effective_at=now - timedelta(days=30), material=True,
                                   published_by="admin-1")
        await PolicyVersion.create(version="2027-01", title="t", summary="s", url="https://x",
                                   effective_at=now + timedelta(days=30), material=True,
                                   published_by="admin-1")
    await put_consent(client, "email_notifications", subscribed=True)
    assert (await ledger(client))["events"][0]["policy_version"] == "2026-01"


async def test_support_withdrawal_needs_admin_key_actor_and_note(client, orm, alice):
    before = await snapshot(orm)
    resp = await put_consent(client, "email_notifications", subscribed=False, source="support",
                             actor="agent smith", note="asked by phone")
    assert resp.status == 403
    resp = await put_consent(client, "email_notifications", headers=ADMIN, subscribed=False,
                             source="support", actor="agent smith")
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["field"] == "body.note"
    assert await snapshot(orm) == before

    resp = await put_consent(client, "email_notifications", headers=ADMIN, subscribed=False,
                             source="support", actor="agent smith", note="asked by phone")
    assert resp.status == 200
    event = (await ledger(client))["events"][0]
    assert (event["source"], event["actor"], event["note"]) == (
        "support", "agent smith", "asked by phone")


async def test_sources_owned_by_notify_cannot_be_claimed_through_the_api(client, orm, alice):
    before = await snapshot(orm)
    for source in ("one_click", "confirmation", "bounce", "complaint", "sms_keyword", "mailto",
                   "unsubscribe_page", "preference_center"):
        resp = await put_consent(client, "newsletter", headers=ADMIN, subscribed=True,
                                 source=source)
        assert resp.status == 422, source
        assert (await resp.json())["errors"][0]["field"] == "body.source"
    assert await snapshot(orm) == before


async def test_unknown_topic_is_404_naming_the_topics(client, orm, alice):
    before = await snapshot(orm)
    resp = await put_consent(client, "carrier_pigeon", subscribed=True)
    assert resp.status == 404
    problem = await resp.json()
    assert problem["errors"][0]["field"] == "path.topic"
    assert "newsletter" in problem["detail"]
    assert await snapshot(orm) == before


async def test_ledger_is_newest_first_and_paginated(client, alice):
    for subscribed in (True, False, True, False, True):
        await put_consent(client, "sms_notifications", subscribed=subscribed)
    first = await ledger(client, limit=2)
    assert [e["to_state"] for e in first["events"]] == ["subscribed", "unsubscribed"]
    ids = [e["id"] for e in first["events"]]
    assert ids == sorted(ids, reverse=True)
    seen = list(ids)
    page = first
    while page["next"]:
        resp = await client.get(page["next"], headers=APP)
        page = await resp.json()
        seen += [e["id"] for e in page["events"]]
    assert len(seen) == 5 and len(set(seen)) == 5
    assert seen == sorted(seen, reverse=True)


async def test_consent_list_has_every_topic(client, alice):
    await put_consent(client, "email_notifications", subscribed=True)
    resp = await client.get("/v1/users/alice/consents", headers=APP)
    consents = (await resp.json())["consents"]
    assert {c["topic"]: c["state"] for c in consents} == {
        "email_notifications": "subscribed", "sms_notifications": None, "newsletter": None}


async def test_concurrent_changes_keep_state_equal_to_the_ledger(client, orm, alice):
    import asyncio

    from notify.models import Consent, ConsentEvent, User

    wishes = [i % 3 != 0 for i in range(24)]
    responses = await asyncio.gather(*(
        put_consent(client, topic, subscribed=wish)
        for wish in wishes for topic in ("sms_notifications", "email_notifications")
    ))
    assert {r.status for r in responses} == {200}
    with orm:
        user = await User.get(external_id="alice")
        for topic in ("sms_notifications", "email_notifications"):
            events = await ConsentEvent.filter(user_id=user.id, topic=topic).order_by("id")
            # Each event starts where the one before it ended: no lost or interleaved update.
            chain = [None] + [e.to_state for e in events]
            assert [e.from_state for e in events] == chain[:-1]
            consent = await Consent.get(user_id=user.id, topic=topic)
            assert consent.state == events[-1].to_state
