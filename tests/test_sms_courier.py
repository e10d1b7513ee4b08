"""The SMS courier: eligibility with the phone, quiet hours driven by an explicit clock,
marketing opt-out lines, the length limit, and ``notify preview --channel sms``."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from support import APP, environ_for

from notify import store
from notify.channels.sms_log import LogSmsChannel
from notify.cli import main
from notify.consent import ConsentSource
from notify.errors import InvalidRequest
from notify.jobs import jobs
from notify.models import Delivery, DeliveryStatus, User
from notify.settings import load_settings
from notify.sms import texts
from notify.sms.courier import SmsCourier
from notify.web.app import COURIER, POSTMAN, make_app

PHONE = "+12025550123"
NEW_YORK = ZoneInfo("America/New_York")


class Clock:
    """A settable time source for the courier."""

    def __init__(self, when: datetime) -> None:
        self.when = when

    def __call__(self) -> datetime:
        return self.when


@pytest.fixture
async def app_client(aiohttp_client, database_url, tmp_path):
    settings = load_settings(environ=environ_for(database_url, tmp_path / "data"))
    client = await aiohttp_client(make_app(settings))
    resp = await client.put("/v1/users/bob", json={
        "phone": PHONE, "phone_verified": True, "time_zone": "America/New_York",
        "locale": "en"}, headers=APP)
    assert resp.status == 201
    resp = await client.put("/v1/users/bob/consents/sms_notifications", headers=APP,
                            json={"subscribed": True, "source": "profile_settings"})
    assert resp.status == 200
    return client, settings


def logged(settings) -> list[dict]:
    if not settings.sms_log_file.exists():
        return []
    return [json.loads(line) for line in settings.sms_log_file.read_text().splitlines()]


async def test_a_text_due_at_11pm_goes_out_after_8am_in_the_users_zone(app_client):
    client, settings = app_client
    clock = Clock(datetime(2025, 1, 15, 23, 0, tzinfo=NEW_YORK))
    courier = SmsCourier(settings, LogSmsChannel(settings), clock=clock)
    user = await User.get(external_id="bob")
    delivery = await courier.enqueue(user, "notification", topic="sms_notifications",
                                     context={"body": "Your order shipped."})
    assert await courier.deliver_due() == 1
    waiting = await Delivery.get(id=delivery.id)
    eight_am = datetime(2025, 1, 16, 8, 0, tzinfo=NEW_YORK)
    assert waiting.status == DeliveryStatus.QUEUED and waiting.next_attempt_at == eight_am
    # Waiting is not an attempt, and the retry deadline moves by the time waited.
    assert waiting.attempts == 0 and waiting.last_error is None
    assert waiting.deadline == delivery.deadline + timedelta(hours=9)
    assert logged(settings) == []

    clock.when = datetime(2025, 1, 16, 7, 59, tzinfo=NEW_YORK)
    assert await courier.deliver_due() == 1  # due by the database's clock, still quiet
    still = await Delivery.get(id=delivery.id)
    assert still.status == DeliveryStatus.QUEUED and still.next_attempt_at == eight_am
    assert still.attempts == 0 and logged(settings) == []

    clock.when = eight_am
    assert await courier.deliver_due() == 1
    sent = await Delivery.get(id=delivery.id)
    assert sent.status == DeliveryStatus.SENT and sent.attempts == 1
    assert sent.sent_at == eight_am
    [text] = logged(settings)
    assert text["to"] == PHONE and text["body"] == "Your order shipped."


async def test_quiet_hours_follow_the_number_when_the_user_has_no_zone(app_client):
    client, settings = app_client
    await client.patch("/v1/users/bob", json={"time_zone": None}, headers=APP)
    # 23:00 in UTC (the default zone) is 18:00 in Washington DC, the number's only zone.
    clock = Clock(datetime(2025, 1, 15, 23, 0, tzinfo=UTC))
    courier = SmsCourier(settings, LogSmsChannel(settings), clock=clock)
    user = await User.get(external_id="bob")
    delivery = await courier.enqueue(user, "notification", topic="sms_notifications",
                                     context={"body": "Hi"})
    await courier.deliver_due()
    assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.SENT


async def noon_courier(settings):
    clock = Clock(datetime(2025, 1, 15, 12, 0, tzinfo=NEW_YORK))
    return SmsCourier(settings, LogSmsChannel(settings), clock=clock)


@pytest.mark.parametrize(("change", "reason"), [
    ({"phone_verified": False}, "unverified"),
    ({"phone": None}, "no_address"),
])
async def test_eligibility_is_asked_again_with_the_phone(app_client, change, reason):
    client, settings = app_client
    courier = await noon_courier(settings)
    user = await User.get(external_id="bob")
    delivery = await courier.enqueue(user, "notification", topic="sms_notifications",
                                     context={"body": "Hi"})
    await client.patch("/v1/users/bob", json=change, headers=APP)
    await courier.deliver_due()
    skipped = await Delivery.get(id=delivery.id)
    assert (skipped.status, skipped.skip_reason) == (DeliveryStatus.SKIPPED, reason)
    assert logged(settings) == []


async def test_a_withdrawal_after_enqueue_skips_the_text(app_client):
    client, settings = app_client
    courier = await noon_courier(settings)
    user = await User.get(external_id="bob")
    delivery = await courier.enqueue(user, "notification", topic="sms_notifications",
                                     context={"body": "Hi"})
    await client.put("/v1/users/bob/consents/sms_notifications", headers=APP,
                     json={"subscribed": False, "source": "profile_settings"})
    await courier.deliver_due()
    skipped = await Delivery.get(id=delivery.id)
    assert (skipped.status, skipped.skip_reason) == (DeliveryStatus.SKIPPED, "not_subscribed")


def counting_places(courier: SmsCourier, after=None) -> list[int]:  # noqa: ANN001
    """Count the places ``courier`` takes in its rate; ``after()`` runs after each."""
    taken: list[int] = []
    pace = courier._rate
    acquire = pace.acquire

    async def counted() -> None:
        taken.append(1)
        await acquire()
        if after is not None:
            after()

    pace.acquire = counted
    return taken


async def add_user(client, name: str, phone: str, zone: str, *, consent: bool) -> User:  # noqa: ANN001
    resp = await client.put(f"/v1/users/{name}", headers=APP, json={
        "phone": phone, "phone_verified": True, "time_zone": zone, "locale": "en"})
    assert resp.status == 201
    if consent:
        resp = await client.put(f"/v1/users/{name}/consents/sms_notifications", headers=APP,
                                json={"subscribed": True, "source": "profile_settings"})
        assert resp.status == 200
    return await User.get(external_id=name)


async def test_only_a_text_about_to_go_takes_a_place_in_the_rate(app_client):
    client, settings = app_client
    clock = Clock(datetime(2025, 1, 15, 12, 0, tzinfo=NEW_YORK))
    courier = SmsCourier(dataclasses.replace(settings, sms_rate=4), LogSmsChannel(settings),
                         clock=clock)
    taken = counting_places(courier)
    # No SMS consent: skipped. Consent, but 02:00 in Tokyo: held for quiet hours.
    users = [await add_user(client, "ann", "+12025550124", "America/New_York", consent=False),
             await add_user(client, "cid", "+12025550125", "America/New_York", consent=False),
             await add_user(client, "dai", "+12025550126", "Asia/Tokyo", consent=True),
             await User.get(external_id="bob")]
    for user in users:
        await courier.enqueue(user, "notification", topic="sms_notifications",
                              context={"body": "Hi"})
    assert await courier.deliver_due() == 4
    statuses = sorted(await Delivery.all().values_list("status", flat=True))
    assert statuses == sorted([DeliveryStatus.SENT, DeliveryStatus.SKIPPED,
                               DeliveryStatus.SKIPPED, DeliveryStatus.QUEUED])
    assert len(taken) == 1 and len(logged(settings)) == 1


async def test_quiet_hours_that_begin_during_the_rates_wait_hold_the_text(app_client):
    _, settings = app_client
    clock = Clock(datetime(2025, 1, 15, 20, 59, 59, tzinfo=NEW_YORK))
    courier = SmsCourier(dataclasses.replace(settings, sms_rate=2), LogSmsChannel(settings),
                         clock=clock)

    def quiet_begins() -> None:
        clock.when = datetime(2025, 1, 15, 21, 0, 1, tzinfo=NEW_YORK)

    taken = counting_places(courier, after=quiet_begins)
    delivery = await courier.enqueue(await User.get(external_id="bob"), "notification",
                                     topic="sms_notifications", context={"body": "Hi"})
    assert await courier.deliver_due() == 1
    held = await Delivery.get(id=delivery.id)
    assert len(taken) == 1 and logged(settings) == []
    assert held.status == DeliveryStatus.QUEUED and held.attempts == 0
    assert held.next_attempt_at == datetime(2025, 1, 16, 8, 0, tzinfo=NEW_YORK)


async def test_marketing_texts_end_with_the_opt_out_line(app_client, tmp_path):
    client, settings = app_client
    config = tmp_path / "notify.toml"
    config.write_text(
        '[topics.sms_notifications]\nchannel = "sms"\nlabel = { en = "SMS" }\n'
        '[topics.sms_offers]\nchannel = "sms"\nkind = "marketing"\n'
        'label = { en = "Offers" }\n', encoding="utf-8")
    settings = load_settings(config, environ=environ_for(settings.database_url,
                                                         settings.data_dir))
    courier = await noon_courier(settings)
    user = await User.get(external_id="bob")
    await store.change_consent(user, settings.topics["sms_offers"], True,
                               store.Evidence(ConsentSource.API), default_policy="1.0")
    await courier.enqueue(user, "newsletter", topic="sms_offers", context={"body": "20% off"})
    await courier.enqueue(user, "notification", topic="sms_notifications",
                          context={"body": "Service note"})
    assert await courier.deliver_due() == 2
    bodies = sorted(text["body"] for text in logged(settings))
    assert bodies == ["20% off\nReply STOP to opt out.", "Service note"]


async def test_a_text_longer_than_the_limit_fails_and_is_not_sent(app_client):
    client, settings = app_client
    settings = load_settings(environ=environ_for(settings.database_url, settings.data_dir,
                                                 NOTIFY_SMS_MAX_SEGMENTS="1"))
    courier = await noon_courier(settings)
    user = await User.get(external_id="bob")
    delivery = await courier.enqueue(user, "notification", topic="sms_notifications",
                                     context={"body": "Ж" * 71})  # UCS-2: 2 segments
    await courier.deliver_due()
    failed = await Delivery.get(id=delivery.id)
    assert failed.status == DeliveryStatus.FAILED and "2 segments" in failed.last_error
    assert logged(settings) == []


async def test_enqueue_refuses_what_could_never_be_sent(app_client):
    client, settings = app_client
    courier = client.app[COURIER]
    user = await User.get(external_id="bob")
    with pytest.raises(InvalidRequest, match="no SMS template"):
        await courier.enqueue(user, "confirmation", topic="sms_notifications", context={})
    with pytest.raises(InvalidRequest, match="needs the variable 'body'"):
        await courier.enqueue(user, "notification", topic="sms_notifications", context={})
    with pytest.raises(InvalidRequest, match="longer than the 90"):
        await courier.enqueue(user, "notification", topic="sms_notifications",
                              context={"body": "x" * 91})
    with pytest.raises(InvalidRequest, match="not an SMS topic"):
        await courier.enqueue(user, "newsletter", topic="newsletter", context={"body": "x"})
    assert await Delivery.all().count() == 0


async def test_the_sender_runs_the_sms_job(app_client):
    client, settings = app_client
    names = [job.__name__ for job in jobs(settings, client.app[POSTMAN], client.app[COURIER])]
    assert "deliver_sms" in names


async def test_after_an_empty_look_texts_wait_a_moment_and_then_all_go(app_client):
    from notify.jobs import LOOK_SECONDS

    client, settings = app_client
    courier = SmsCourier(settings, LogSmsChannel(settings),
                         clock=Clock(datetime(2025, 1, 15, 12, 0, tzinfo=NEW_YORK)))
    ticks = [100.0]
    [deliver_sms] = [job for job in jobs(settings, client.app[POSTMAN], courier,
                                         clock=lambda: ticks[0])
                     if job.__name__ == "deliver_sms"]
    user = await User.get(external_id="bob")

    async def text() -> None:
        await courier.enqueue(user, "notification", topic="sms_notifications",
                              context={"body": "Your order shipped."})

    assert await deliver_sms() == 0  # nothing due: the next look waits LOOK_SECONDS
    await text()
    ticks[0] += LOOK_SECONDS * 0.9
    assert await deliver_sms() == 0 and len(logged(settings)) == 0
    ticks[0] += LOOK_SECONDS * 0.1
    assert await deliver_sms() == 1 and len(logged(settings)) == 1
    # A look that found texts looks again on the very next pass, at the same moment.
    await text()
    await text()
    assert await deliver_sms() == 2 and len(logged(settings)) == 3
    assert await deliver_sms() == 0


# -- texts and preview -------------------------------------------------------------------


def test_every_sms_text_exists_in_every_language():
    phrases = texts.phrases()
    assert set(phrases) == {"en", "de"}
    assert set(phrases["en"]) == set(phrases["de"])


@pytest.mark.parametrize("kind", list(texts.KINDS))
@pytest.mark.parametrize("locale", ["en", "de"])
def test_shipped_templates_fit_the_default_limit_with_their_longest_values(kind, locale):
    assert texts.worst_case(kind, locale).segments <= 2


def test_the_worst_case_is_not_beaten_by_any_allowed_value():
    # The worst case claims an upper bound: try a few extreme values against it.
    spec = texts.KINDS["notification"]
    bound = texts.worst_case("notification", "en")
    for fill in ("a", "€", "Ж", "ç", "{"):
        body = fill * spec.variables["body"].max_units
        counted = texts.check_length(texts.render("notification", "en", {"body": body},
                                                  marketing=True), 10)
        assert counted.segments <= bound.segments


def preview_env(monkeypatch, tmp_path, **extra):
    import os

    for name in list(os.environ):
        if name.startswith("NOTIFY_"):
            monkeypatch.delenv(name)
    for name, value in environ_for("sqlite://:memory:", tmp_path / "data", **extra).items():
        monkeypatch.setenv(name, value)


def test_preview_prints_an_sms_with_its_segments(monkeypatch, tmp_path, capsys):
    preview_env(monkeypatch, tmp_path)
    assert main(["preview", "newsletter", "--channel", "sms", "--locale", "de"]) == 0
    out = capsys.readouterr().out
    assert "Antworten Sie STOP zum Abmelden." in out
    assert "1 segment(s)" in out


def test_preview_refuses_a_template_that_can_exceed_the_limit(monkeypatch, tmp_path, capsys):
    preview_env(monkeypatch, tmp_path, NOTIFY_SMS_MAX_SEGMENTS="1")
    assert main(["preview", "newsletter", "--channel", "sms"]) == 1
    err = capsys.readouterr().err
    assert "can take 2 segments" in err and "NOTIFY_SMS_MAX_SEGMENTS=1" in err
    assert main(["preview", "confirmation", "--channel", "sms"]) == 1
    assert "no SMS template" in capsys.readouterr().err


def test_preview_names_the_file_of_a_broken_sms_template(monkeypatch, tmp_path, capsys):
    preview_env(monkeypatch, tmp_path)
    broken = tmp_path / "sms"
    broken.mkdir()
    (broken / "notification.txt.j2").write_text("{{ body }\n")
    import jinja2

    monkeypatch.setattr(texts, "_ENV", jinja2.Environment(
        loader=jinja2.FileSystemLoader(broken), undefined=jinja2.StrictUndefined))
    assert main(["preview", "notification", "--channel", "sms"]) == 1
    assert "notification.txt.j2:1" in capsys.readouterr().err
