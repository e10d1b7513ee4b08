"""Users over HTTP: create, replace, patch, read, erase, export."""

from __future__ import annotations

from support import ADMIN, APP, snapshot

from notify.models import AddressKind, ConsentEvent, Suppression, User
from notify.store import address_hash


async def test_put_creates_then_replaces_user(client):
    resp = await client.put("/v1/users/u1", json={"email": "Ada@EXAMPLE.com", "name": "Ada"},
                            headers=APP)
    assert resp.status == 201
    body = await resp.json()
    assert body["id"] == "u1"
    assert body["email"] == "ada@example.com"  # stored in lower case: one address, one person
    assert body["locale"] == "en"
    assert [c["topic"] for c in body["consents"]] == [
        "email_notifications", "sms_notifications", "newsletter"]
    assert all(c["state"] is None and c["subscribed"] is False for c in body["consents"])

    resp = await client.put("/v1/users/u1", json={"phone": "+49 151 23456789"}, headers=APP)
    assert resp.status == 200
    body = await resp.json()
    assert body["phone"] == "+4915123456789"
    assert body["email"] is None  # PUT replaces: what is left out takes its default
    assert body["name"] is None


async def test_patch_changes_only_given_fields(client, alice):
    resp = await client.patch("/v1/users/alice", json={"name": "Alice B.", "phone": None},
                              headers=APP)
    assert resp.status == 200
    body = await resp.json()
    assert body["name"] == "Alice B."
    assert body["phone"] is None
    assert body["email"] == "alice@example.com"
    assert body["locale"] == "de"


async def test_get_user_shows_consents_with_localised_labels(client, alice):
    await client.put("/v1/users/alice/consents/email_notifications",
                     json={"subscribed": True}, headers=APP)
    resp = await client.get("/v1/users/alice", headers=APP)
    assert resp.status == 200
    consents = {c["topic"]: c for c in (await resp.json())["consents"]}
    assert consents["email_notifications"]["state"] == "subscribed"
    assert consents["email_notifications"]["label"] == "E-Mail-Benachrichtigungen"
    assert consents["sms_notifications"]["state"] is None


async def test_unknown_user_is_404(client):
    resp = await client.get("/v1/users/nobody", headers=APP)
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["errors"][0]["field"] == "path.id"


async def test_email_of_another_user_is_409_and_changes_nothing(client, orm, alice):
    before = await snapshot(orm)
    resp = await client.put("/v1/users/bob", json={"email": "alice@example.com"}, headers=APP)
    assert resp.status == 409
    problem = await resp.json()
    assert problem["errors"][0]["field"] == "body.email"
    assert await snapshot(orm) == before


async def test_email_case_does_not_make_a_second_address(client, orm, alice):
    before = await snapshot(orm)
    resp = await client.put("/v1/users/bob", json={"email": "ALICE@Example.com"}, headers=APP)
    assert resp.status == 409
    assert await snapshot(orm) == before


async def test_erasure_removes_contact_data_and_keeps_anonymised_ledger(client, orm, alice):
    await client.put("/v1/users/alice/consents/email_notifications", json={
        "subscribed": True, "source": "profile_settings", "ip": "203.0.113.5",
        "user_agent": "Firefox", "note": "from settings"}, headers=APP)
    with orm:
        user = await User.get(external_id="alice")
        from notify.models import Campaign, Delivery
        from notify.store import now

        campaign = await Campaign.create(name="news", kind="newsletter", channels=["email"],
                                         topic="newsletter", template="newsletter",
                                         created_by="test")
        # One outside any campaign and one of a campaign: erasure finds each through its
        # own index (migration 0006).
        for campaign_id in (None, campaign.id):
            await Delivery.create(user_id=user.id, channel="email", kind="newsletter",
                                  campaign_id=campaign_id, context={"name": "Alice"},
                                  next_attempt_at=now(), deadline=now(),
                                  provider_ref="250 2.0.0 queued for alice@example.com",
                                  last_error="550 5.1.1 <alice@example.com> unknown")
        await Suppression.create(kind=AddressKind.EMAIL, reason="complaint",
                                 address_hash=address_hash(b"h" * 32, AddressKind.EMAIL,
                                                           "alice@example.com"))

    resp = await client.delete("/v1/users/alice", headers=ADMIN)
    assert resp.status == 204
    assert (await client.get("/v1/users/alice", headers=APP)).status == 404
    assert (await client.delete("/v1/users/alice", headers=ADMIN)).status == 204
    assert (await client.delete("/v1/users/nobody", headers=ADMIN)).status == 404

    with orm:
        erased = await User.get(id=user.id)
        assert erased.external_id.startswith("erased:") and "alice" not in erased.external_id
        assert (erased.email, erased.phone, erased.name) == (None, None, None)
        assert erased.erased_at is not None
        events = await ConsentEvent.filter(user_id=user.id).order_by("id")
        # The subscription was withdrawn on erasure, and the ledger says so.
        assert [(e.to_state, e.source, e.note) for e in events] == [
            ("subscribed", "profile_settings", None), ("unsubscribed", "api", "erasure")]
        assert all(e.ip is None and e.user_agent is None for e in events)
        assert await Suppression.filter(kind=AddressKind.EMAIL).count() == 1
        deliveries = await Delivery.filter(user_id=user.id)
        assert len(deliveries) == 2
        assert all((d.last_error, d.context, d.provider_ref) == (None, {}, None)
                   for d in deliveries)

    # The main app may create a new user with the same id; it starts with no consent.
    resp = await client.put("/v1/users/alice", json={"email": "alice@example.com"}, headers=APP)
    assert resp.status == 201
    assert all(c["state"] is None for c in (await resp.json())["consents"])


async def test_export_holds_user_ledger_and_suppressions(client, orm, alice):
    await client.put("/v1/users/alice/consents/newsletter", json={"subscribed": True},
                     headers=APP)
    with orm:
        await Suppression.create(kind=AddressKind.PHONE, reason="carrier_opt_out",
                                 address_hash=address_hash(b"h" * 32, AddressKind.PHONE,
                                                           "+4915123456789"))
    resp = await client.get("/v1/users/alice/export", headers=APP)
    assert resp.status == 200
    body = await resp.json()
    assert body["user"]["email"] == "alice@example.com"
    assert [(e["topic"], e["to_state"]) for e in body["consent_events"]] == [
        ("newsletter", "pending")]
    assert [(s["kind"], s["reason"]) for s in body["suppressions"]] == [
        ("phone", "carrier_opt_out")]
