"""Twilio's webhooks: inbound keywords and status callbacks, signed with
``X-Twilio-Signature``. Refused requests change nothing (compared row by row)."""

from __future__ import annotations

import json
import re

import pytest
from support import APP, environ_for, snapshot
from twilio.request_validator import RequestValidator

from notify.consent import ConsentSource
from notify.models import (
    AddressKind,
    Consent,
    ConsentEvent,
    Delivery,
    DeliveryStatus,
    Suppression,
    SuppressionReason,
    User,
)
from notify.settings import load_settings
from notify.web.app import COURIER, make_app
from notify.web.endpoints import DB

TOKEN = "hook-test-token-0123456789abcdef"
PUBLIC = "https://notify.example.com"
INBOUND = "/webhooks/twilio/sms"
STATUS = "/webhooks/twilio/status"
PHONE = "+4915123456789"
OUR_NUMBER = "+15005550006"
MESSAGE_SID = "SM" + "0f" * 16


def test_twilio_published_signature_vector():
    # https://www.twilio.com/docs/usage/security#validating-requests
    validator = RequestValidator("12345")
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
              "From": "+14158675309", "To": "+18005551212"}
    assert validator.compute_signature(url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert validator.validate(url, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not validator.validate(url, {**params, "Digits": "1235"},
                                  "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


@pytest.fixture
async def hooks(aiohttp_client, database_url, tmp_path):
    settings = load_settings(environ=environ_for(
        database_url, tmp_path / "data", NOTIFY_PUBLIC_URL=PUBLIC,
        NOTIFY_TWILIO_AUTH_TOKEN=TOKEN, NOTIFY_TWILIO_FROM=OUR_NUMBER,
        NOTIFY_SMS_QUIET_START="00:00", NOTIFY_SMS_QUIET_END="00:00",
        NOTIFY_REPLY_TO="help@example.com"))
    client = await aiohttp_client(make_app(settings))
    resp = await client.put("/v1/users/ada", json={
        "phone": PHONE, "phone_verified": True, "locale": "en"}, headers=APP)
    assert resp.status == 201
    resp = await client.put("/v1/users/ada/consents/sms_notifications", headers=APP,
                            json={"subscribed": True, "source": "profile_settings"})
    assert resp.status == 200
    return client, settings


def sign(path: str, params: dict[str, str], url: str | None = None) -> str:
    return RequestValidator(TOKEN).compute_signature(url or PUBLIC + path, params)


async def post(client, path, params, signature=None, **kwargs):
    headers = {"X-Twilio-Signature": sign(path, params) if signature is None else signature}
    if signature == "":
        headers = {}
    return await client.post(path, data=params, headers=headers, **kwargs)


def inbound(body: str, sender: str = PHONE, sid: str = MESSAGE_SID, **extra) -> dict:
    return {"MessageSid": sid, "SmsSid": sid, "AccountSid": "AC" + "1" * 32, "From": sender,
            "To": OUR_NUMBER, "Body": body, "NumMedia": "0", **extra}


def reply_of(xml: str) -> str | None:
    found = re.search(r"<Message>(.*)</Message>", xml, re.S)
    return found.group(1) if found else None


async def consent_state(topic="sms_notifications"):
    user = await User.get(external_id="ada")
    return (await Consent.get(user_id=user.id, topic=topic)).state


async def test_stop_withdraws_and_is_confirmed_once(hooks):
    client, settings = hooks
    resp = await post(client, INBOUND, inbound(" Stop "))
    assert resp.status == 200 and resp.content_type == "text/xml"
    assert "no longer receive SMS" in reply_of(await resp.text())
    assert await consent_state() == "unsubscribed"
    user = await User.get(external_id="ada")
    [event] = await ConsentEvent.filter(user_id=user.id, to_state="unsubscribed")
    assert event.source == ConsentSource.SMS_KEYWORD and MESSAGE_SID in event.note
    # A second STOP (or any opt-out) while unsubscribed: no second confirmation text.
    again = await post(client, INBOUND, inbound("UNSUBSCRIBE", sid="SM" + "1" * 32))
    assert again.status == 200 and reply_of(await again.text()) is None
    assert await ConsentEvent.filter(user_id=user.id, to_state="unsubscribed").count() == 1


async def test_the_ledger_api_shows_the_keyword_withdrawal(hooks):
    client, settings = hooks
    await post(client, INBOUND, inbound("STOP"))
    resp = await client.get("/v1/users/ada/consent-events", headers=APP)
    [latest, *_] = (await resp.json())["events"]
    assert (latest["topic"], latest["to_state"], latest["source"]) == (
        "sms_notifications", "unsubscribed", "sms_keyword")


async def test_free_text_revocation_withdraws(hooks):
    client, settings = hooks
    resp = await post(client, INBOUND, inbound("Please stop texting me, thanks"))
    assert reply_of(await resp.text()) is not None
    assert await consent_state() == "unsubscribed"


@pytest.mark.parametrize("case", ["wrong", "missing", "other_path", "other_host",
                                  "tampered"])
async def test_a_bad_signature_is_refused_and_changes_nothing(hooks, case):
    client, settings = hooks
    params = inbound("STOP")
    signature = {
        "wrong": "bm90IGEgc2lnbmF0dXJl",
        "missing": "",
        # Replays of a genuine signature made for another URL.
        "other_path": sign(STATUS, params),
        "other_host": sign(INBOUND, params, url="https://evil.example.com" + INBOUND),
        "tampered": sign(INBOUND, {**params, "Body": "HELP"}),
    }[case]
    before = await snapshot(client.app[DB])
    resp = await post(client, INBOUND, params, signature=signature)
    assert resp.status == 403
    assert (await resp.json())["title"] == "Forbidden"
    assert await snapshot(client.app[DB]) == before
    assert await consent_state() == "subscribed"


async def test_the_url_checked_is_the_public_one_with_its_query(hooks):
    client, settings = hooks
    params = inbound("STOP")
    path = INBOUND + "?tenant=a"
    assert (await post(client, path, params, signature=sign(INBOUND, params))).status == 403
    resp = await post(client, path, params, signature=sign(path, params))
    assert resp.status == 200 and await consent_state() == "unsubscribed"


async def test_start_resubscribes_and_lifts_a_carrier_opt_out(hooks):
    client, settings = hooks
    await post(client, INBOUND, inbound("STOP"))
    from notify import store

    await store.suppress(settings.hash_key, AddressKind.PHONE, PHONE,
                         SuppressionReason.CARRIER_OPT_OUT)
    await store.suppress(settings.hash_key, AddressKind.PHONE, "+4915100000000",
                         SuppressionReason.CARRIER_OPT_OUT)
    resp = await post(client, INBOUND, inbound("start", sid="SM" + "2" * 32))
    assert resp.status == 200
    assert "receive SMS from us again" in reply_of(await resp.text())
    assert await consent_state() == "subscribed"
    user = await User.get(external_id="ada")
    event = await ConsentEvent.filter(user_id=user.id).order_by("-id").first()
    assert event.source == ConsentSource.SMS_KEYWORD and event.to_state == "subscribed"
    # Only this number's carrier opt-out is lifted.
    assert await Suppression.all().count() == 1


async def test_start_does_not_lift_an_invalid_number_suppression(hooks):
    client, settings = hooks
    from notify import store

    await store.suppress(settings.hash_key, AddressKind.PHONE, PHONE,
                         SuppressionReason.INVALID_NUMBER)
    await post(client, INBOUND, inbound("YES"))
    assert await Suppression.filter(reason="invalid_number").count() == 1


async def test_help_answers_and_changes_nothing(hooks):
    client, settings = hooks
    before = await snapshot(client.app[DB])
    resp = await post(client, INBOUND, inbound("help"))
    text = reply_of(await resp.text())
    assert "Reply STOP to opt out" in text and "help@example.com" in text
    assert await snapshot(client.app[DB]) == before


async def test_replies_speak_the_users_language(hooks):
    client, settings = hooks
    await client.patch("/v1/users/ada", json={"locale": "de"}, headers=APP)
    resp = await post(client, INBOUND, inbound("STOP"))
    assert "keine SMS mehr" in reply_of(await resp.text())


@pytest.mark.parametrize(("opt_out_type", "state"), [("STOP", "unsubscribed"),
                                                      ("HELP", "subscribed")])
async def test_advanced_opt_out_is_acted_on_without_a_second_reply(hooks, opt_out_type,
                                                                   state):
    client, settings = hooks
    resp = await post(client, INBOUND, inbound(opt_out_type.lower(), OptOutType=opt_out_type))
    assert resp.status == 200 and reply_of(await resp.text()) is None
    assert await consent_state() == state


async def test_advanced_opt_out_start_resubscribes_silently(hooks):
    client, settings = hooks
    await post(client, INBOUND, inbound("STOP", OptOutType="STOP"))
    resp = await post(client, INBOUND, inbound("START", OptOutType="START"))
    assert reply_of(await resp.text()) is None
    assert await consent_state() == "subscribed"


@pytest.mark.parametrize("sender", ["+4915199999999", "ALPHA", ""])
async def test_an_unknown_number_gets_empty_twiml_and_changes_nothing(hooks, sender):
    client, settings = hooks
    before = await snapshot(client.app[DB])
    resp = await post(client, INBOUND, inbound("STOP", sender=sender))
    assert resp.status == 200
    assert await resp.text() == '<?xml version="1.0" encoding="UTF-8"?><Response />'
    assert await snapshot(client.app[DB]) == before


async def test_an_ordinary_message_changes_nothing(hooks):
    client, settings = hooks
    before = await snapshot(client.app[DB])
    resp = await post(client, INBOUND, inbound("Thanks, got it"))
    assert resp.status == 200 and reply_of(await resp.text()) is None
    assert await snapshot(client.app[DB]) == before


async def test_bad_bodies_get_a_clear_4xx_and_change_nothing(hooks):
    client, settings = hooks
    before = await snapshot(client.app[DB])
    # Not UTF-8 (the signature cannot even be checked over it).
    resp = await client.post(INBOUND, data=b"Body=\xff\xfe&From=%2B1",
                             headers={"Content-Type": "application/x-www-form-urlencoded",
                                      "X-Twilio-Signature": "x"})
    assert resp.status == 400
    resp = await client.post(INBOUND, data=b"Body=%ff", headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"})
    assert resp.status == 400
    resp = await client.post(INBOUND, json={"Body": "STOP"}, headers={"X-Twilio-Signature": "x"})
    assert resp.status == 415
    big = {"Body": "x" * (settings.max_body_bytes + 10)}
    resp = await post(client, INBOUND, big)
    assert resp.status == 413
    # Signed, but without the fields Twilio always sends.
    for params in ({"From": PHONE, "Body": "STOP"}, {"MessageSid": MESSAGE_SID, "From": PHONE},
                   {"MessageSid": "../../x", "From": PHONE, "Body": "STOP"}):
        resp = await post(client, INBOUND, params)
        assert resp.status == 400, params
        assert resp.content_type == "application/problem+json"
    resp = await post(client, STATUS, {"MessageSid": MESSAGE_SID})
    assert resp.status == 400
    resp = await post(client, STATUS, {"MessageSid": MESSAGE_SID, "MessageStatus": "failed",
                                       "ErrorCode": "abc"})
    assert resp.status == 400
    assert await snapshot(client.app[DB]) == before


# -- status callbacks --------------------------------------------------------------------


async def sent_text(client):
    """A notification sent through the log channel; returns its delivery."""
    courier = client.app[COURIER]
    user = await User.get(external_id="ada")
    delivery = await courier.enqueue(user, "notification", topic="sms_notifications",
                                     context={"body": "Your export is ready."})
    assert await courier.deliver_due() == 1
    return await Delivery.get(id=delivery.id)


def callback(delivery, status, **extra):
    return {"MessageSid": delivery.provider_ref, "MessageStatus": status, "To": PHONE,
            "From": OUR_NUMBER, "AccountSid": "AC" + "1" * 32, **extra}


async def test_the_log_channel_writes_one_json_line_per_text(hooks):
    client, settings = hooks
    delivery = await sent_text(client)
    [line] = settings.sms_log_file.read_text(encoding="utf-8").splitlines()
    logged = json.loads(line)
    assert logged["sid"] == delivery.provider_ref and logged["to"] == PHONE
    assert logged["body"] == "Your export is ready." and logged["segments"] == 1
    assert logged["from"] == OUR_NUMBER
    assert logged["status_callback"] == PUBLIC + STATUS
    assert settings.sms_log_file.stat().st_mode & 0o077 == 0


async def test_delivered_is_recorded_and_never_undone_by_a_late_sent(hooks):
    client, settings = hooks
    delivery = await sent_text(client)
    assert delivery.status == DeliveryStatus.SENT
    resp = await post(client, STATUS, callback(delivery, "queued"))
    assert resp.status == 204
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.SENT
    await post(client, STATUS, callback(delivery, "delivered"))
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.DELIVERED
    before = await snapshot(client.app[DB])
    for late in ("sent", "queued", "undelivered", "failed"):
        resp = await post(client, STATUS, callback(delivery, late, ErrorCode="30003"))
        assert resp.status == 204
    assert await snapshot(client.app[DB]) == before


async def test_undelivered_records_the_error_code(hooks):
    client, settings = hooks
    delivery = await sent_text(client)
    await post(client, STATUS, callback(delivery, "sent"))
    await post(client, STATUS, callback(delivery, "undelivered", ErrorCode="30003"))
    done = await Delivery.get(id=delivery.id)
    assert done.status == DeliveryStatus.UNDELIVERED and "30003" in done.last_error
    assert await Suppression.all().count() == 0


async def test_a_failed_callback_with_21610_suppresses_and_withdraws(hooks):
    client, settings = hooks
    delivery = await sent_text(client)
    await post(client, STATUS, callback(delivery, "failed", ErrorCode="21610"))
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.FAILED
    [row] = await Suppression.all()
    assert row.reason == SuppressionReason.CARRIER_OPT_OUT
    assert await consent_state() == "unsubscribed"
    user = await User.get(external_id="ada")
    event = await ConsentEvent.filter(user_id=user.id).order_by("-id").first()
    assert event.source == ConsentSource.SMS_KEYWORD and delivery.provider_ref in event.note


async def test_a_failed_callback_with_21614_marks_the_number_unusable(hooks):
    client, settings = hooks
    delivery = await sent_text(client)
    await post(client, STATUS, callback(delivery, "failed", ErrorCode="21614"))
    [row] = await Suppression.all()
    assert row.reason == SuppressionReason.INVALID_NUMBER
    assert await consent_state() == "subscribed"


async def test_a_callback_for_an_unknown_message_or_status_changes_nothing(hooks):
    client, settings = hooks
    delivery = await sent_text(client)
    before = await snapshot(client.app[DB])
    resp = await post(client, STATUS, {"MessageSid": "SM" + "9" * 32,
                                       "MessageStatus": "delivered"})
    assert resp.status == 204
    resp = await post(client, STATUS, callback(delivery, "read"))
    assert resp.status == 204
    assert await snapshot(client.app[DB]) == before


async def test_a_status_callback_with_a_bad_signature_is_refused(hooks):
    client, settings = hooks
    delivery = await sent_text(client)
    before = await snapshot(client.app[DB])
    params = callback(delivery, "failed", ErrorCode="21610")
    resp = await post(client, STATUS, params, signature=sign(INBOUND, params))
    assert resp.status == 403
    assert await snapshot(client.app[DB]) == before


async def test_without_an_auth_token_every_webhook_is_refused(aiohttp_client, settings):
    client = await aiohttp_client(make_app(settings))
    resp = await post(client, INBOUND, inbound("STOP"))
    assert resp.status == 403
