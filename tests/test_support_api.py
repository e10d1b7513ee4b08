"""The admin API that the console stands on: user look-up by id or email, withdrawal on a
user's behalf, suppressions, the dashboard's figures and the notice preview. Each is
admin-only, in /openapi.json, and does what the console does (same domain functions)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from support import ADMIN, APP, snapshot

from notify import stats, store
from notify.models import AuditEntry, ConsentEvent, Delivery, User

POLICY = {"version": "2026-12", "title": "Clearer retention", "summary": "Two years, not five.",
          "url": "https://example.com/privacy/2026-12", "effective_at": "2026-12-01T00:00:00Z",
          "material": False}
NEW = [("POST", "/v1/users/lookup"), ("POST", "/v1/users/{id}/withdrawals"),
       ("GET", "/v1/suppressions"), ("POST", "/v1/suppressions"),
       ("POST", "/v1/suppressions/search"), ("GET", "/v1/stats"),
       ("POST", "/v1/policies/preview")]


async def test_new_endpoints_are_admin_only_and_documented(client):
    spec = await (await client.get("/openapi.json")).json()
    for method, path in NEW:
        assert method.lower() in spec["paths"][path], path
        resp = await client.request(method, path.replace("{id}", "alice"), headers=APP,
                                    json={})
        assert resp.status == 403, path


async def test_users_are_found_by_id_or_email_in_any_case(client, alice):
    for query in ("alice", "alice@example.com", "ALICE@Example.com"):
        resp = await client.post("/v1/users/lookup", json={"q": query}, headers=ADMIN)
        assert resp.status == 200
        assert (await resp.json())["id"] == "alice"
    resp = await client.post("/v1/users/lookup", json={"q": "nobody@example.com"},
                             headers=ADMIN)
    assert resp.status == 404 and resp.content_type == "application/problem+json"
    resp = await client.post("/v1/users/lookup", json={}, headers=ADMIN)
    assert resp.status == 422
    # No look-up by a URL that carries the address.
    spec = await (await client.get("/openapi.json")).json()
    assert "get" not in spec["paths"].get("/v1/users", {})
    assert all(p["name"] != "address" for p in spec["paths"]["/v1/suppressions"]["get"]
               ["parameters"])


async def test_withdrawal_records_support_with_the_key_and_note_and_is_audited(
        client, orm, alice, settings):
    kid = next(k.kid for k in settings.api_keys if k.scope == "admin")
    for topic in ("email_notifications", "sms_notifications"):
        await client.put(f"/v1/users/alice/consents/{topic}", json={"subscribed": True},
                         headers=APP)
    resp = await client.post("/v1/users/alice/withdrawals", json={
        "topic": "all", "note": "asked by phone"}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    found = {w["topic"]: w for w in (await resp.json())["withdrawn"]}
    assert found["email_notifications"] == {"topic": "email_notifications",
                                            "from_state": "subscribed", "changed": True}
    # Never asked becomes a recorded "no", as `notify consents withdraw` records it.
    assert found["newsletter"] == {"topic": "newsletter", "from_state": None, "changed": True}
    again = await client.post("/v1/users/alice/withdrawals", json={
        "topic": "email_notifications", "note": "asked twice"}, headers=ADMIN)
    assert (await again.json())["withdrawn"][0]["changed"] is False
    with orm:
        events = await ConsentEvent.filter(source="support").order_by("id")
        assert [(e.topic, e.note) for e in events] == [
            ("email_notifications", "asked by phone"), ("sms_notifications", "asked by phone"),
            ("newsletter", "asked by phone")]
        assert {e.actor for e in events} == {kid}
        user = await User.get(external_id="alice")
        entries = await AuditEntry.filter(action="consent.withdraw").order_by("id")
        assert [(e.key_id, e.target, e.detail["changed"]) for e in entries] == [
            (kid, f"user:{user.id}", 3), (kid, f"user:{user.id}", 0)]


@pytest.mark.parametrize(("body", "field"), [
    ({"topic": "all", "note": ""}, "body.note"),
    ({"topic": "all", "note": "   "}, "body.note"),
    ({"topic": "bogus", "note": "x"}, "body.topic"),
    ({"topic": "all"}, "body.note"),
])
async def test_bad_withdrawals_change_nothing(client, orm, alice, body, field):
    before = await snapshot(orm)
    resp = await client.post("/v1/users/alice/withdrawals", json=body, headers=ADMIN)
    assert resp.status == 422
    assert field in [e["field"] for e in (await resp.json())["errors"]]
    assert await snapshot(orm) == before


async def test_suppressions_are_added_once_searched_by_whole_address_and_audited(client, orm):
    body = {"address": "Gone@Example.com", "note": "asked by letter"}
    assert (await client.post("/v1/suppressions", json=body, headers=ADMIN)).status == 201
    resp = await client.post("/v1/suppressions", json=body, headers=ADMIN)
    assert resp.status == 200 and (await resp.json()) == {"added": False}
    await client.post("/v1/suppressions", json={"address": "+4915123456789", "note": "x"},
                      headers=ADMIN)
    found = (await (await client.post("/v1/suppressions/search",
                                      json={"address": "gone@example.com"},
                                      headers=ADMIN)).json())["suppressions"]
    assert [(s["kind"], s["reason"], s["note"]) for s in found] == [
        ("email", "manual", "asked by letter")]
    everything = (await (await client.get("/v1/suppressions", headers=ADMIN)).json())
    assert [s["kind"] for s in everything["suppressions"]] == ["phone", "email"]
    with orm:
        assert await store.is_suppressed(b"h" * 32, "email", "gone@example.com")
        assert await AuditEntry.filter(action="suppression.add").count() == 2


async def test_policy_preview_shows_the_notice_and_its_audience_and_saves_nothing(
        client, orm, alice):
    await client.put("/v1/users/bob", json={"email": "bob@example.com",
                                            "email_verified": True}, headers=APP)
    await client.put("/v1/users/alice/consents/email_notifications",
                     json={"subscribed": True}, headers=APP)
    before = await snapshot(orm)
    resp = await client.post("/v1/policies/preview", json=POLICY, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    found = await resp.json()
    assert found["eligible"] == 1 and found["excluded"] == {"not_subscribed": 1}
    assert found["examples"] == {"not_subscribed": ["bob"]}
    assert "Only subscribers of email notifications" in found["who"]
    assert [s["locale"] for s in found["samples"]] == ["en", "de"]
    assert all("Two years, not five." in s["text"] for s in found["samples"])
    assert await snapshot(orm) == before
    material = await (await client.post("/v1/policies/preview", json={
        **POLICY, "material": True}, headers=ADMIN)).json()
    assert material["eligible"] == 2 and "Everyone with a deliverable" in material["who"]


async def test_stats_count_sends_unsubscribes_and_rates(client, orm, alice):
    await client.put("/v1/users/alice/consents/email_notifications",
                     json={"subscribed": True}, headers=APP)
    await client.put("/v1/users/alice/consents/email_notifications",
                     json={"subscribed": False}, headers=APP)
    now = store.now()
    with orm:
        user = await User.get(external_id="alice")
        for status, ago in ([("sent", 1), ("sent", 1), ("bounced", 20),
                                           ("complained", 20), ("queued", 0),
                             ("sent", 60 * 25)]):
            # Outside any campaign: (campaign, user, channel) is unique within one.
            await Delivery.create(user=user,
                                  channel="email", kind="newsletter", status=status,
                                  next_attempt_at=now - timedelta(minutes=1), deadline=now,
                                  sent_at=now - timedelta(minutes=ago) if status != "queued"
                                  else None)
        found = await stats.dashboard(now)
    assert found.queue_depth == {"email": 1, "sms": 0}
    assert found.unsubscribes == {"api": 1}
    assert found.handed_over == 5 and found.complained == 1 and found.bounced == 1
    assert found.complaint_rate == pytest.approx(20.0)
    assert sum(v for _, v in found.sends_per_minute) * stats.BUCKET_MINUTES == 4  # not 25 h ago
    assert len(found.sends_per_minute) == 97
    resp = await client.get("/v1/stats", headers=ADMIN)
    body = await resp.json()
    assert body["bounce_rate_30d"] == 20.0 and body["unsubscribes_30d"] == {"api": 1}
