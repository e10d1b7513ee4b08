"""The preference read, GET /v1/users/{id}/consents: one joined query (store.consents_of)
that must answer exactly what the two-query, model-based read answered before it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from support import ADMIN, APP

from notify import store
from notify.models import Consent, User
from notify.web.endpoints import SETTINGS
from notify.web.schemas import ConsentList
from notify.web.users import consent_out

WHEN = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


async def model_read(client, orm, external_id: str) -> bytes:  # noqa: ANN001
    """The body as the read built it before: get_user, consent_states, tortoise models."""
    topics = client.app[SETTINGS].topics
    with orm:
        user = await store.get_user(external_id)
        rows = await store.consent_states(user)
    return ConsentList(consents=[consent_out(t, rows.get(name), user.locale)
                                 for name, t in topics.items()]).model_dump_json().encode()


async def read(client, external_id: str = "alice", headers=APP):  # noqa: ANN001, ANN201
    resp = await client.get(f"/v1/users/{external_id}/consents", headers=headers)
    return resp, await resp.read()


async def put_consent(client, topic: str, subscribed: bool, user: str = "alice") -> None:  # noqa: ANN001
    resp = await client.put(f"/v1/users/{user}/consents/{topic}",
                            json={"subscribed": subscribed}, headers=APP)
    assert resp.status == 200, await resp.text()


async def test_user_without_consents_reads_every_topic_never_asked(client, orm, alice):
    resp, body = await read(client)
    assert resp.status == 200 and resp.content_type == "application/json"
    assert body == await model_read(client, orm, "alice")
    # alice's locale is "de": the labels follow it.
    assert json.loads(body) == {"consents": [
        {"topic": "email_notifications", "channel": "email",
         "label": "E-Mail-Benachrichtigungen", "state": None, "subscribed": False,
         "updated_at": None},
        {"topic": "sms_notifications", "channel": "sms", "label": "SMS-Benachrichtigungen",
         "state": None, "subscribed": False, "updated_at": None},
        {"topic": "newsletter", "channel": "email", "label": "Newsletter", "state": None,
         "subscribed": False, "updated_at": None},
    ]}


async def test_body_is_byte_for_byte_the_model_read(client, orm, alice):
    await put_consent(client, "email_notifications", True)
    await put_consent(client, "newsletter", True)  # double opt-in: pending
    await put_consent(client, "sms_notifications", True)
    await put_consent(client, "sms_notifications", False)
    resp, body = await read(client)
    assert resp.status == 200
    assert body == await model_read(client, orm, "alice")
    states = {c["topic"]: c["state"] for c in json.loads(body)["consents"]}
    assert states == {"email_notifications": "subscribed", "sms_notifications": "unsubscribed",
                      "newsletter": "pending"}


async def test_body_equals_the_consents_of_the_user_endpoint(client, alice):
    await put_consent(client, "email_notifications", True)
    _, body = await read(client)
    resp = await client.get("/v1/users/alice", headers=APP)
    assert json.loads(body)["consents"] == (await resp.json())["consents"]


async def test_fixed_time_reads_as_the_exact_expected_json(client, orm, alice):
    with orm:
        user = await User.get(external_id="alice")
        await Consent.create(user_id=user.id, topic="email_notifications",
                             state="subscribed", updated_at=WHEN)
        await Consent.create(user_id=user.id, topic="sms_notifications",
                             state="unsubscribed", updated_at=WHEN.replace(microsecond=0))
    _, body = await read(client)
    assert body == (
        b'{"consents":[{"topic":"email_notifications","channel":"email",'
        b'"label":"E-Mail-Benachrichtigungen","state":"subscribed","subscribed":true,'
        b'"updated_at":"2026-01-02T03:04:05.678901Z"},{"topic":"sms_notifications",'
        b'"channel":"sms","label":"SMS-Benachrichtigungen","state":"unsubscribed",'
        b'"subscribed":false,"updated_at":"2026-01-02T03:04:05Z"},{"topic":"newsletter",'
        b'"channel":"email","label":"Newsletter","state":null,"subscribed":false,'
        b'"updated_at":null}]}'
    )
    assert body == await model_read(client, orm, "alice")


async def test_topic_removed_from_config_is_left_out(client, orm, alice):
    await put_consent(client, "email_notifications", True)
    with orm:
        user = await User.get(external_id="alice")
        await Consent.create(user_id=user.id, topic="retired_topic", state="subscribed",
                             updated_at=WHEN)
    _, body = await read(client)
    assert body == await model_read(client, orm, "alice")
    assert [c["topic"] for c in json.loads(body)["consents"]] == [
        "email_notifications", "sms_notifications", "newsletter"]


async def test_only_the_named_users_rows_are_read(client, orm, alice):
    resp = await client.put("/v1/users/bob", json={"email": "bob@example.com"}, headers=APP)
    assert resp.status == 201
    await put_consent(client, "email_notifications", True, user="bob")
    _, body = await read(client)
    assert all(c["state"] is None for c in json.loads(body)["consents"])
    _, body = await read(client, "bob")
    assert body == await model_read(client, orm, "bob")
    assert json.loads(body)["consents"][0]["state"] == "subscribed"


async def test_a_withdrawal_is_seen_by_the_next_read(client, orm, alice):
    await put_consent(client, "email_notifications", True)
    _, body = await read(client)
    assert json.loads(body)["consents"][0]["subscribed"] is True
    await put_consent(client, "email_notifications", False)
    _, body = await read(client)
    assert json.loads(body)["consents"][0]["state"] == "unsubscribed"
    # A change written elsewhere (another process, the worker) is seen at once too.
    with orm:
        await Consent.filter(topic="email_notifications").update(state="subscribed")
    _, body = await read(client)
    assert json.loads(body)["consents"][0]["state"] == "subscribed"


@pytest.mark.parametrize("external_id", ["nobody", "erased:abc"])
async def test_unknown_or_erased_form_ids_answer_as_before(client, alice, external_id):
    resp, body = await read(client, external_id)
    assert resp.content_type == "application/problem+json"
    if external_id == "nobody":
        assert resp.status == 404
        assert json.loads(body) == {
            "type": "about:blank", "title": "Not found", "status": 404,
            "detail": "no user with id 'nobody'",
            "errors": [{"field": "path.id", "message": "no user with id 'nobody'"}]}
    else:
        assert resp.status == 422
        assert json.loads(body)["errors"][0]["field"] == "path.id"


async def test_an_erased_user_is_not_found_by_the_old_id(client, alice):
    assert (await client.delete("/v1/users/alice", headers=ADMIN)).status == 204
    resp, body = await read(client)
    assert resp.status == 404
    assert json.loads(body)["detail"] == "no user with id 'alice'"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key-0123456789"}])
async def test_a_missing_or_wrong_key_is_401(client, alice, headers):
    resp, body = await read(client, headers=headers)
    assert resp.status == 401
    assert resp.content_type == "application/problem+json"
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="notify"'
    assert json.loads(body)["title"] == "Unauthorized"
