"""SMS through the real ``twilio`` library to a stand-in of Twilio's API on loopback, and
Twilio's failures: 429 and 503 are retried, 21610 suppresses and withdraws, 21211 and
21614 mark the number unusable, other 4xx fail for good."""

from __future__ import annotations

from datetime import timedelta

import pytest
from support import APP, environ_for, free_port
from twilio_standin import ACCOUNT_SID, AUTH_TOKEN, StandIn, error

from notify import store
from notify.channels.sms_twilio import TwilioSmsChannel
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
from notify.sms.courier import SmsCourier
from notify.web.app import COURIER, make_app

PHONE = "+4915123456789"
SENDER = "+15005550006"
SERVICE = "MG" + "ab" * 16


def twilio_env(api_base: str, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SMS_TRANSPORT": "twilio", "NOTIFY_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "NOTIFY_TWILIO_AUTH_TOKEN": AUTH_TOKEN, "NOTIFY_TWILIO_FROM": SENDER,
            "NOTIFY_TWILIO_API_BASE": api_base,
            # Quiet hours off: these tests run at any time of day (test_sms_courier has them).
            "NOTIFY_SMS_QUIET_START": "00:00", "NOTIFY_SMS_QUIET_END": "00:00",
            "NOTIFY_PUBLIC_URL": "https://notify.example.com", **extra}


async def make_texter(aiohttp_client, database_url, tmp_path, api_base, **extra):
    settings = load_settings(environ=environ_for(database_url, tmp_path / "data",
                                                 **twilio_env(api_base, **extra)))
    client = await aiohttp_client(make_app(settings))
    resp = await client.put("/v1/users/ada", json={
        "phone": PHONE, "phone_verified": True, "name": "Ada"}, headers=APP)
    assert resp.status == 201
    resp = await client.put("/v1/users/ada/consents/sms_notifications", headers=APP,
                            json={"subscribed": True, "source": "profile_settings"})
    assert resp.status == 200
    return client, client.app[COURIER], settings


@pytest.fixture
async def standin(aiohttp_server):
    fake = StandIn()
    server = await aiohttp_server(fake.app(), host="127.0.0.1")
    return fake, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def texter(aiohttp_client, database_url, tmp_path, standin):
    fake, base = standin
    client, courier, settings = await make_texter(aiohttp_client, database_url, tmp_path, base)
    assert isinstance(courier.channel, TwilioSmsChannel)
    return client, courier, fake, settings


async def notification(courier, body="Your export is ready."):
    user = await User.get(external_id="ada")
    return await courier.enqueue(user, "notification", topic="sms_notifications",
                                 context={"body": body})


async def test_a_text_reaches_twilio_with_sender_callback_and_basic_auth(texter):
    client, courier, fake, settings = texter
    delivery = await notification(courier)
    assert await courier.deliver_due() == 1
    [request] = fake.received
    assert request["account"] == ACCOUNT_SID
    assert request["scheme"] == "Basic" and request["auth"] == (ACCOUNT_SID, AUTH_TOKEN)
    assert request["content_type"] == "application/x-www-form-urlencoded"
    form = request["form"]
    assert form["To"] == PHONE
    assert form["Body"] == "Your export is ready."
    assert form["From"] == SENDER and "MessagingServiceSid" not in form
    assert form["StatusCallback"] == "https://notify.example.com/webhooks/twilio/status"
    done = await Delivery.get(id=delivery.id)
    assert done.status == DeliveryStatus.SENT and done.attempts == 1
    assert done.provider_ref.startswith("SM") and len(done.provider_ref) == 34
    assert done.channel == "sms" and done.sent_at is not None


async def test_a_messaging_service_replaces_the_from_number(aiohttp_client, database_url,
                                                            tmp_path, standin):
    fake, base = standin
    _, courier, _ = await make_texter(aiohttp_client, database_url, tmp_path, base,
                                      NOTIFY_TWILIO_MESSAGING_SERVICE_SID=SERVICE)
    await notification(courier)
    assert await courier.deliver_due() == 1
    form = fake.received[0]["form"]
    assert form["MessagingServiceSid"] == SERVICE and "From" not in form


@pytest.mark.parametrize("status", [429, 503])
async def test_a_temporary_failure_is_retried_and_then_succeeds(texter, status):
    client, courier, fake, settings = texter
    fake.replies.append(error(status, 20429 if status == 429 else 20500, "try again later"))
    delivery = await notification(courier)
    assert await courier.deliver_due() == 1
    waiting = await Delivery.get(id=delivery.id)
    assert waiting.status == DeliveryStatus.QUEUED and waiting.attempts == 1
    assert f"Twilio {status}" in waiting.last_error
    assert waiting.next_attempt_at > store.now()  # backoff: not due yet
    assert await courier.deliver_due() == 0
    # The pause has passed (made due now rather than waited for).
    await Delivery.filter(id=delivery.id).update(next_attempt_at=store.now())
    assert await courier.deliver_due() == 1
    sent = await Delivery.get(id=delivery.id)
    assert sent.status == DeliveryStatus.SENT and sent.attempts == 2
    assert len(fake.received) == 2 and fake.received[1]["form"]["To"] == PHONE


async def test_a_temporary_failure_with_no_time_left_before_the_deadline_fails(texter):
    client, courier, fake, settings = texter
    fake.replies.append(error(503, 20500, "unavailable"))
    delivery = await notification(courier)
    # Five seconds left: shorter than any first pause (30 s less 20% jitter).
    await Delivery.filter(id=delivery.id).update(deadline=store.now() + timedelta(seconds=5))
    assert await courier.deliver_due() == 1
    failed = await Delivery.get(id=delivery.id)
    assert failed.status == DeliveryStatus.FAILED and "Twilio 503" in failed.last_error


async def test_an_unreachable_twilio_is_a_temporary_failure(aiohttp_client, database_url,
                                                            tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    _, courier, _ = await make_texter(aiohttp_client, database_url, tmp_path, closed)
    delivery = await notification(courier)
    assert await courier.deliver_due() == 1
    waiting = await Delivery.get(id=delivery.id)
    assert waiting.status == DeliveryStatus.QUEUED and waiting.attempts == 1
    assert "connection to Twilio failed" in waiting.last_error


async def test_a_non_json_gateway_error_is_temporary(texter):
    client, courier, fake, settings = texter
    fake.replies.append((502, "<html><body>Bad Gateway</body></html>"))
    delivery = await notification(courier)
    assert await courier.deliver_due() == 1
    waiting = await Delivery.get(id=delivery.id)
    assert waiting.status == DeliveryStatus.QUEUED and "502" in waiting.last_error


async def test_a_stalled_twilio_times_out_as_a_temporary_failure(texter):
    client, courier, fake, settings = texter
    fake.stall = 2.0
    channel = TwilioSmsChannel(settings, timeout=0.2)
    try:
        slow = SmsCourier(settings, channel)
        delivery = await notification(slow)
        assert await slow.deliver_due() == 1
    finally:
        await channel.close()
    waiting = await Delivery.get(id=delivery.id)
    assert waiting.status == DeliveryStatus.QUEUED and waiting.attempts == 1
    assert "connection to Twilio failed" in waiting.last_error


async def test_21610_suppresses_the_number_and_withdraws_sms_consent(texter):
    client, courier, fake, settings = texter
    fake.replies.append(error(400, 21610, "Attempt to send to unsubscribed recipient"))
    delivery = await notification(courier)
    assert await courier.deliver_due() == 1
    failed = await Delivery.get(id=delivery.id)
    assert failed.status == DeliveryStatus.FAILED and "21610" in failed.last_error
    [row] = await Suppression.filter(kind=AddressKind.PHONE)
    assert row.reason == SuppressionReason.CARRIER_OPT_OUT
    assert row.address_hash == store.address_hash(settings.hash_key, AddressKind.PHONE, PHONE)
    user = await User.get(external_id="ada")
    consent = await Consent.get(user_id=user.id, topic="sms_notifications")
    assert consent.state == "unsubscribed"
    event = await ConsentEvent.filter(user_id=user.id).order_by("-id").first()
    assert event.source == ConsentSource.SMS_KEYWORD and event.to_state == "unsubscribed"
    assert "21610" in event.note
    # Nothing more goes to the number, even with consent given again some other way.
    await client.put("/v1/users/ada/consents/sms_notifications", headers=APP,
                     json={"subscribed": True, "source": "profile_settings"})
    again = await notification(courier)
    assert await courier.deliver_due() == 1
    skipped = await Delivery.get(id=again.id)
    assert (skipped.status, skipped.skip_reason) == (DeliveryStatus.SKIPPED, "suppressed")
    assert len(fake.received) == 1


@pytest.mark.parametrize("code", [21211, 21614])
async def test_an_invalid_or_landline_number_is_marked_unusable(texter, code):
    client, courier, fake, settings = texter
    fake.replies.append(error(400, code, f"The 'To' number {PHONE} is not valid"))
    delivery = await notification(courier)
    assert await courier.deliver_due() == 1
    failed = await Delivery.get(id=delivery.id)
    assert failed.status == DeliveryStatus.FAILED and str(code) in failed.last_error
    assert PHONE not in failed.last_error  # the number in Twilio's words is masked
    [row] = await Suppression.filter(kind=AddressKind.PHONE)
    assert row.reason == SuppressionReason.INVALID_NUMBER
    user = await User.get(external_id="ada")
    # Consent is a different matter: an unusable number withdraws nothing.
    assert (await Consent.get(user_id=user.id, topic="sms_notifications")).state == "subscribed"


async def test_other_client_errors_fail_without_consequences(texter):
    client, courier, fake, settings = texter
    fake.replies.append(error(400, 21606, "The From phone number is not a valid number"))
    delivery = await notification(courier)
    assert await courier.deliver_due() == 1
    failed = await Delivery.get(id=delivery.id)
    assert failed.status == DeliveryStatus.FAILED and failed.attempts == 1
    assert await Suppression.all().count() == 0


async def test_wrong_credentials_fail_as_a_client_error(aiohttp_client, database_url, tmp_path,
                                                       standin):
    fake, base = standin
    _, courier, _ = await make_texter(aiohttp_client, database_url, tmp_path, base,
                                      NOTIFY_TWILIO_AUTH_TOKEN="not-the-token-at-all")
    delivery = await notification(courier)
    assert await courier.deliver_due() == 1
    failed = await Delivery.get(id=delivery.id)
    assert failed.status == DeliveryStatus.FAILED and "20003" in failed.last_error
    assert "not-the-token" not in failed.last_error


async def test_the_channel_refuses_to_be_built_outside_a_running_loop(settings):
    import asyncio

    def build():
        return TwilioSmsChannel(settings)

    with pytest.raises(RuntimeError):
        await asyncio.to_thread(build)


async def test_the_courier_is_built_and_closed_with_the_app(texter):
    client, courier, fake, settings = texter
    assert isinstance(courier, SmsCourier)
    session = courier.channel._http.session
    await client.close()
    assert session.closed
