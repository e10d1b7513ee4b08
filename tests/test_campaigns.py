"""Policy versions, campaigns, the audience preview, the enqueue and the sender, end to end
on both databases: every user gets exactly what the rules say."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import json
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import markupsafe
import pytest
from population import populate, pure_reasons, tally
from support import ADMIN, APP, HASH_KEY, snapshot
from tortoise.transactions import in_transaction

from notify import audience, campaigns, eligibility, i18n, postman, store
from notify.models import AuditEntry, Campaign, Consent, ConsentEvent, Delivery, User
from notify.web.endpoints import POSTMAN

POLICY = {
    "version": "2026-12", "title": "Clearer retention periods",
    "summary": "We now keep support tickets for two years instead of five.",
    "url": "https://example.com/privacy/2026-12", "effective_at": "2026-12-01T00:00:00Z",
    "material": True,
}


async def publish(client, **changes) -> dict:  # noqa: ANN001
    resp = await client.post("/v1/policies", json={**POLICY, **changes}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def create(client, **body) -> dict:  # noqa: ANN001
    resp = await client.post("/v1/campaigns", json={"name": "test", **body}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def drain(client) -> int:  # noqa: ANN001
    """Run the sender's email work until nothing is due; returns how many were handled."""
    postman, handled = client.app[POSTMAN], 0
    while (batch := await postman.deliver_due(200)):
        handled += batch
    await campaigns.finish_done()
    return handled


def outbox(settings) -> list[email.message.EmailMessage]:  # noqa: ANN001
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
            for p in sorted(settings.outbox_dir.glob("*.eml"))]


# -- policy versions ---------------------------------------------------------------------


async def test_a_published_policy_is_listed_immutable_audited_and_in_force(client, orm):
    out = await publish(client, effective_at="2020-01-01T00:00:00Z")
    assert out["version"] == "2026-12" and out["published_by"].startswith("admin-")
    again = await client.post("/v1/policies", json={**POLICY, "title": "Changed"},
                              headers=ADMIN)
    assert again.status == 409
    assert "cannot change" in (await again.json())["detail"]
    listed = await (await client.get("/v1/policies", headers=ADMIN)).json()
    assert [p["title"] for p in listed["policies"]] == [POLICY["title"]]
    assert (await client.get("/v1/policies", headers=APP)).status == 403
    page = await client.get("/policy")
    assert POLICY["title"] in await page.text()
    # Every consent event records the version in force.
    await client.put("/v1/users/ann", json={"email": "ann@example.com"}, headers=APP)
    await client.put("/v1/users/ann/consents/newsletter", json={"subscribed": True},
                     headers=APP)
    with orm:
        event = await ConsentEvent.filter(topic="newsletter").first()
        assert event.policy_version == "2026-12"
        entry = await AuditEntry.get(action="policy.publish")
        assert (entry.key_id, entry.target) == (out["published_by"], "policy:2026-12")


@pytest.mark.parametrize("body, field", [
    ({"version": "bad label!"}, "body.version"),
    ({"effective_at": "2026-12-01T00:00:00"}, "body.effective_at"),
    ({"url": "not a url"}, "body.url"),
    ({"material": "maybe"}, "body.material"),
    ({"summary": ""}, "body.summary"),
])
async def test_bad_policy_input_is_refused_and_changes_nothing(client, orm, body, field):
    before = await snapshot(orm)
    resp = await client.post("/v1/policies", json={**POLICY, **body}, headers=ADMIN)
    assert resp.status == 422
    assert field in [e["field"] for e in (await resp.json())["errors"]]
    assert await snapshot(orm) == before


# -- creating campaigns ------------------------------------------------------------------


@pytest.mark.parametrize("body, field", [
    ({"kind": "spam"}, "body.kind"),
    ({"kind": "newsletter"}, "body.topic"),
    ({"kind": "newsletter", "topic": "nope"}, "body.topic"),
    ({"kind": "newsletter", "topic": "newsletter", "channels": ["sms"]}, "body.channels"),
    ({"kind": "newsletter", "topic": "newsletter", "channels": []}, "body.channels"),
    ({"kind": "policy_notice"}, "body.policy_version"),
    ({"kind": "policy_notice", "policy_version": "1999"}, "body.policy_version"),
    ({"kind": "newsletter", "topic": "newsletter", "template": "missing"}, "body.template"),
    ({"kind": "newsletter", "topic": "newsletter", "template": "../etc"}, "body.template"),
    ({"kind": "newsletter", "topic": "newsletter", "variables": {"subject": "s"}},
     "body.variables"),
    ({"kind": "newsletter", "topic": "newsletter", "audience": {"country": "XX"}},
     "body.audience.country"),
    ({"kind": "newsletter", "topic": "newsletter", "color": "red"}, "body.color"),
])
async def test_bad_campaigns_are_refused_with_the_field_named(client, orm, body, field):
    before = await snapshot(orm)
    resp = await client.post("/v1/campaigns", json={"name": "x", **body}, headers=ADMIN)
    assert resp.status == 422, await resp.text()
    problem = await resp.json()
    assert field in [e["field"] for e in problem["errors"]], problem
    assert await snapshot(orm) == before


async def test_unknown_campaign_ids_are_404(client):
    for path in ("/v1/campaigns/999", "/v1/campaigns/abc", "/v1/campaigns/99999999999999999999"):
        resp = await client.get(path, headers=ADMIN)
        assert resp.status == 404, path
    assert (await client.post("/v1/campaigns/999/send", headers=ADMIN)).status == 404


# -- the rule, the preview and the enqueue agree -----------------------------------------


NEWSLETTER = {"kind": "newsletter", "topic": "newsletter",
              "variables": {"subject": "News", "body": "Hello"}}


async def test_mixed_population_gets_exactly_what_the_rules_say(client, orm, settings):
    with orm:
        profiles = await populate(2000, HASH_KEY)
    made = await create(client, **NEWSLETTER)
    # The preview before any send ...
    preview = await (await client.get(f"/v1/campaigns/{made['id']}/audience",
                                      headers=ADMIN)).json()
    with orm:
        expected = await pure_reasons(HASH_KEY, "newsletter", "newsletter",
                                      settings.topics["newsletter"])
        campaign = await Campaign.get(id=made["id"])
        sql = await audience.reasons_by_user(campaign, "email", {"email": "newsletter"})
    # ... is the pure rule's answer for every single user, and its counts are the tally.
    assert sql == expected
    eligible, excluded = tally(expected)
    assert preview["eligible"] == eligible == 400  # subscribed and subscribed_de
    assert preview["channels"][0]["excluded"] == excluded
    assert excluded == {"unverified": 200, "not_subscribed": 800, "suppressed": 200,
                        "erased": 200, "no_address": 200}
    assert all(len(ids) == 3 for ids in preview["channels"][0]["examples"].values())
    assert profiles[preview["channels"][0]["examples"]["suppressed"][0]] == "suppressed"

    sent = await (await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)).json()
    assert (sent["status"], sent["enqueued"], sent["excluded"]) == ("sending", 400, excluded)
    await drain(client)
    status = await (await client.get(f"/v1/campaigns/{made['id']}", headers=ADMIN)).json()
    assert status["status"] == "done" and status["counts"] == {"sent": 400}
    assert status["progress"] == 1.0
    received = Counter(m["To"].split("@")[0] for m in outbox(settings))
    assert set(received) == {u for u, p in profiles.items()
                             if p in ("subscribed", "subscribed_de")}
    assert set(received.values()) == {1}
    # Every message carries its own one-click link and names the campaign.
    first = outbox(settings)[0]
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert first["Feedback-ID"].startswith(f"{made['id']}:newsletter:")
    # Enqueueing again adds nothing: one delivery per campaign, user and channel.
    with orm:
        again = await audience.enqueue(campaign, {"email": "newsletter"}, now=store.now(),
                                       retry_hours=1, parts=3)
        assert again.added == 0
    assert (await client.post(f"/v1/campaigns/{made['id']}/send",
                              headers=ADMIN)).status == 409


async def test_each_reader_of_one_batch_gets_their_own_name_and_links(client, orm, settings):
    """The batch shares one rendering of the templates (notify.render_once); each message
    still greets its own reader, escaped in the HTML, and carries its own links."""
    names = ["Ada <b>&amp;", None, "", "Zoë {name}", "Bob"]
    with orm:
        profiles = await populate(60, HASH_KEY)
        readers = sorted(u for u, p in profiles.items() if p in ("subscribed", "subscribed_de"))
        for number, external in enumerate(readers):
            await User.filter(external_id=external).update(name=names[number % len(names)])
    made = await create(client, **NEWSLETTER)
    await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)
    assert await drain(client) == len(readers) >= 10
    links = set()
    for message in outbox(settings):
        with orm:
            user = await User.get(email=message["To"].addresses[0].addr_spec)
        locale = user.locale
        greeting = (i18n.translate(locale, "email_confirm_greeting", name=user.name)
                    if user.name else i18n.translate(locale, "email_greeting"))
        text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
        html = message.get_body(("html",)).get_content()
        assert text.startswith(greeting + "\n")
        assert f"<p>{markupsafe.escape(greeting)}</p>" in html
        link = message["List-Unsubscribe"].split("<", 1)[1].split(">", 1)[0]
        assert f": {link}\n" in text and f'href="{markupsafe.escape(link)}"' in html
        links.add(link)
    assert len(links) == len(readers)


async def test_audience_filters_select_by_locale_country_and_creation(client, orm, settings):
    with orm:
        await populate(100, HASH_KEY)
    german = await create(client, **NEWSLETTER, audience={"locale": "de"})
    preview = await (await client.get(f"/v1/campaigns/{german['id']}/audience",
                                      headers=ADMIN)).json()
    assert preview["eligible"] == 10 and preview["channels"][0]["excluded"] == {}
    recent = await create(client, **NEWSLETTER, audience={
        "created_after": (datetime.now(UTC) - timedelta(days=5, hours=1)).isoformat()})
    preview = await (await client.get(f"/v1/campaigns/{recent['id']}/audience",
                                      headers=ADMIN)).json()
    with orm:
        cut = store.now() - timedelta(days=5, hours=1)
        selected = {u.id for u in await User.filter(created_at__gte=cut)}
        expected = await pure_reasons(HASH_KEY, "newsletter", "newsletter",
                                      settings.topics["newsletter"])
    eligible, _ = tally({k: v for k, v in expected.items() if k in selected})
    assert preview["eligible"] == eligible > 0
    nobody = await create(client, **NEWSLETTER, audience={"country": "FR"})
    preview = await (await client.get(f"/v1/campaigns/{nobody['id']}/audience",
                                      headers=ADMIN)).json()
    assert preview["eligible"] == 0 and preview["channels"][0]["excluded"] == {}


# -- policy notices ----------------------------------------------------------------------


async def test_a_material_notice_reaches_the_opted_out_never_the_suppressed(client, orm,
                                                                            settings):
    with orm:
        profiles = await populate(200, HASH_KEY)
    await publish(client)
    made = await create(client, kind="policy_notice", policy_version="2026-12")
    preview = await (await client.get(f"/v1/campaigns/{made['id']}/audience",
                                      headers=ADMIN)).json()
    with orm:
        expected = await pure_reasons(HASH_KEY, "policy_notice", None, None,
                                      eligibility.Notice(material=True))
    assert (preview["eligible"], preview["channels"][0]["excluded"]) == tally(expected)
    await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)
    await drain(client)
    got = {m["To"].split("@")[0]: m for m in outbox(settings)}
    kinds = Counter(profiles[u] for u in got)
    # Everyone with a verified, deliverable address, whatever their consents ...
    assert set(kinds) == {"subscribed", "pending", "unsubscribed", "never_asked",
                          "opted_out_all", "subscribed_de"}
    assert set(kinds.values()) == {20}
    # ... and no List-Unsubscribe: a legal notice is not a subscription.
    sample = next(iter(got.values()))
    assert sample["List-Unsubscribe"] is None
    assert "two years" in sample.get_payload()[0].get_content()
    # The same version again reaches nobody new.
    second = await create(client, kind="policy_notice", policy_version="2026-12")
    preview = await (await client.get(f"/v1/campaigns/{second['id']}/audience",
                                      headers=ADMIN)).json()
    assert preview["eligible"] == 0
    assert preview["channels"][0]["excluded"]["already_notified"] == 120
    sent = await (await client.post(f"/v1/campaigns/{second['id']}/send",
                                    headers=ADMIN)).json()
    assert sent["enqueued"] == 0
    await drain(client)
    assert len(outbox(settings)) == 120


async def test_a_non_material_notice_goes_to_email_notification_subscribers(client, orm,
                                                                             settings):
    with orm:
        profiles = await populate(100, HASH_KEY)
    await publish(client, version="2026-12b", material=False)
    made = await create(client, kind="policy_notice", policy_version="2026-12b")
    await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)
    await drain(client)
    got = {m["To"].split("@")[0] for m in outbox(settings)}
    assert {profiles[u] for u in got} == {"subscribed", "subscribed_de"}
    assert len(got) == 20
    # It is posted on /policy all the same.
    assert "Clearer retention periods" in await (await client.get("/policy")).text()


# -- pause, resume, cancel, test sends, the audit log -----------------------------------


async def test_pause_holds_resume_sends_cancel_stops_and_all_is_audited(client, orm,
                                                                        settings):
    with orm:
        await populate(100, HASH_KEY)
    made = await create(client, **NEWSLETTER)
    cid = made["id"]
    await client.post(f"/v1/campaigns/{cid}/send", headers=ADMIN)
    paused = await (await client.post(f"/v1/campaigns/{cid}/pause", headers=ADMIN)).json()
    assert paused["status"] == "paused" and paused["counts"] == {"held": 20}
    assert await drain(client) == 0 and outbox(settings) == []
    resumed = await (await client.post(f"/v1/campaigns/{cid}/resume", headers=ADMIN)).json()
    assert resumed["counts"] == {"queued": 20}
    postman = client.app[POSTMAN]
    await postman.deliver_due(5)
    cancelled = await (await client.post(f"/v1/campaigns/{cid}/cancel", headers=ADMIN)).json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["counts"] == {"sent": 5, "cancelled": 15}
    assert await drain(client) == 0 and len(outbox(settings)) == 5
    assert (await client.post(f"/v1/campaigns/{cid}/resume", headers=ADMIN)).status == 409
    log = await (await client.get(f"/v1/audit?target=campaign:{cid}", headers=ADMIN)).json()
    assert [e["action"] for e in reversed(log["entries"])] == [
        "campaign.create", "campaign.send", "campaign.pause", "campaign.resume",
        "campaign.cancel"]
    assert len({e["key_id"] for e in log["entries"]}) == 1
    assert log["entries"][0]["key_id"].startswith("admin-")


async def test_a_test_send_goes_to_the_given_addresses_only_and_counts_nothing(client, orm,
                                                                              settings):
    with orm:
        await populate(20, HASH_KEY)
    await publish(client)
    made = await create(client, kind="policy_notice", policy_version="2026-12")
    resp = await client.post(f"/v1/campaigns/{made['id']}/test", headers=ADMIN,
                             json={"addresses": ["team@example.org"], "locale": "de"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["sent"] == ["team@example.org"]
    [message] = outbox(settings)
    assert message["To"] == "team@example.org" and message["Subject"].startswith("[Test]")
    status = await (await client.get(f"/v1/campaigns/{made['id']}", headers=ADMIN)).json()
    assert status["counts"] == {} and status["status"] == "draft"
    bad = await client.post(f"/v1/campaigns/{made['id']}/test", headers=ADMIN,
                            json={"addresses": ["not-an-address"]})
    assert bad.status == 422


async def test_a_scheduled_campaign_starts_when_its_time_comes(client, orm, settings):
    with orm:
        await populate(20, HASH_KEY)
    later = datetime.now(UTC) + timedelta(hours=2)
    made = await create(client, **NEWSLETTER, send_at=later.isoformat())
    sent = await (await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)).json()
    assert sent["status"] == "scheduled" and sent["enqueued"] == 0
    with orm:
        assert await campaigns.start_scheduled(settings) == 0
        assert await campaigns.start_scheduled(settings, later + timedelta(seconds=1)) == 1
        assert (await Campaign.get(id=made["id"])).enqueued == 4


async def test_the_sender_looks_for_scheduled_campaigns_once_a_moment(client, orm, settings):
    from notify import jobs as jobs_module

    ticks = [100.0]
    [start] = [job for job in jobs_module.jobs(settings, client.app[POSTMAN],
                                               clock=lambda: ticks[0])
               if job.__name__ == "start_campaigns"]
    with orm:
        await populate(20, HASH_KEY)
    soon = datetime.now(UTC) + timedelta(seconds=2)
    made = await create(client, **NEWSLETTER, send_at=soon.isoformat())
    assert (await client.post(f"/v1/campaigns/{made['id']}/send",
                              headers=ADMIN)).status == 200
    with orm:
        assert await start() == 0  # not due yet: the next look waits LOOK_SECONDS
        await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
        ticks[0] += jobs_module.LOOK_SECONDS * 0.9
        assert await start() == 0  # due now, but within the moment: not looked for
        assert (await Campaign.get(id=made["id"])).status == "scheduled"
        ticks[0] += jobs_module.LOOK_SECONDS * 0.1
        assert await start() == 1
        assert (await Campaign.get(id=made["id"])).status == "sending"


async def test_a_batch_cut_to_the_smtp_rate_is_full_and_does_not_look_for_done_campaigns(
        client, orm, settings, monkeypatch):
    from notify import jobs as jobs_module
    from notify.channels.factory import email_channel

    limited = dataclasses.replace(settings, smtp_rate=3)
    postman_ = postman.Postman(limited, email_channel(limited))
    assert postman_.batch_size(50, 500) == 3
    assert postman.Postman(dataclasses.replace(settings, smtp_pool_size=8), None
                           ).batch_size(50, 500) == 400
    looked = []
    real_finish = campaigns.finish_done

    async def finish_done(*args, **kwargs):  # noqa: ANN002, ANN003
        looked.append(True)
        return await real_finish(*args, **kwargs)

    monkeypatch.setattr(campaigns, "finish_done", finish_done)
    work = {job.__name__: job for job in jobs_module.jobs(limited, postman_,
                                                          clock=lambda: 100.0)}
    with orm:
        await populate(20, HASH_KEY)
    made = await create(client, **NEWSLETTER)
    await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)
    with orm:
        # 4 queued, a batch of 3 (the rate): a full batch, so more are waiting and the
        # campaign is looked at only on the timer (whose first call is due); the next
        # batch of 1 runs the queue dry, and then it is looked at.
        assert await work["deliver_email"]() == 3
        await work["finish_campaigns"]()
        assert looked == [True]
        await work["finish_campaigns"]()
        assert looked == [True]
        assert await work["deliver_email"]() == 1
        await work["finish_campaigns"]()
        assert looked == [True, True]
        assert (await Campaign.get(id=made["id"])).status == "done"


async def test_the_complaint_guard_pauses_a_campaign_and_says_why(client, orm, settings):
    from notify import bounces

    with orm:
        await populate(100, HASH_KEY)
    made = await create(client, **NEWSLETTER)
    await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)
    await client.app[POSTMAN].deliver_due(10)
    with orm:
        first = await Delivery.filter(campaign_id=made["id"], status="sent").first()
        await bounces.record_complaint(settings, first, None, "spam")
        guarded = dataclasses.replace(settings, guard_min_sent=10)
        assert await campaigns.check_guards(guarded) == 1
        campaign = await Campaign.get(id=made["id"])
    assert campaign.status == "paused"
    assert "complaint rate 10.00% of 10 messages" in campaign.paused_reason
    status = await (await client.get(f"/v1/campaigns/{made['id']}", headers=ADMIN)).json()
    assert status["counts"]["complained"] == 1 and status["counts"]["held"] == 10
    with orm:
        assert await AuditEntry.filter(action="campaign.pause", key_id="guard").count() == 1


# -- withdrawals while a campaign is sending ---------------------------------------------


@pytest.mark.parametrize("round_", range(3))
async def test_one_click_during_a_send_stops_everything_after_it(client, orm, settings,
                                                                 round_):
    """Users unsubscribe by one-click while the campaign goes out: nothing whose final
    check came after their withdrawal was answered is sent to them."""
    with orm:
        await populate(400, HASH_KEY, prefix=f"r{round_}-")
    made = await create(client, **NEWSLETTER)
    cid = made["id"]
    await client.post(f"/v1/campaigns/{cid}/send", headers=ADMIN)
    with orm:
        rows = await Delivery.filter(campaign_id=cid).values("id", "user_id")
        handles = {u.id: u for u in await User.filter(id__in=[r["user_id"] for r in rows])}
    rng = random.Random(round_)
    leaving = rng.sample(rows, 40)
    answered: dict[int, datetime] = {}
    # Each withdrawal waits for a given number of the sender's batches, spread over the
    # whole send, so some come before their message and some after whatever the machine's
    # speed (a race left to the clock was lost by the sender on a loaded machine).
    batches = [0]
    progress = asyncio.Condition()

    async def withdraw(row: dict, after: int) -> None:
        resp = await client.get(f"/v1/users/{handles[row['user_id']].external_id}/links",
                                headers=APP)
        url = (await resp.json())["unsubscribe"]["newsletter"]
        async with progress:
            await progress.wait_for(lambda: batches[0] >= after)
        path = url.split("127.0.0.1:8080", 1)[1]
        done = await client.post(path, data={"List-Unsubscribe": "One-Click"})
        assert done.status == 200
        answered[row["user_id"]] = store.now()

    async def send_slowly() -> None:
        # Small batches with pauses between them, so withdrawals land mid-campaign.
        for _ in range(1000):
            sent = await client.app[POSTMAN].deliver_due(4)
            async with progress:
                batches[0] += 1
                progress.notify_all()
            if not sent:
                return
            await asyncio.sleep(0.02)

    await asyncio.gather(send_slowly(), *(withdraw(r, i % 20) for i, r in enumerate(leaving)))
    await drain(client)
    skipped = late = 0
    with orm:
        for user_id, at in answered.items():
            recorded = (await ConsentEvent.filter(user_id=user_id, source="one_click")
                        .first()).recorded_at
            for d in await Delivery.filter(campaign_id=cid, user_id=user_id):
                if d.status == "sent":
                    assert d.checked_at <= at, "checked after the withdrawal, sent anyway"
                    # recorded_at is stamped before the withdrawal commits: a check that
                    # read just before the commit may begin after the stamp.
                    late += d.checked_at > recorded
                else:
                    assert (d.status, d.skip_reason) == ("skipped", "not_subscribed")
                    skipped += 1
    # The withdrawals really came while it was sending: some were in time to stop theirs.
    assert 0 < skipped < 40
    status = await (await client.get(f"/v1/campaigns/{cid}", headers=ADMIN)).json()
    assert status["withdrawals"]["sent_after_withdrawal"] == late
    assert status["withdrawals"]["during"] == 40
    assert sum(status["counts"].values()) == 80 and status["status"] == "done"


async def test_campaign_progress_counts_one_click_unsubscribes_from_its_messages(client, orm,
                                                                                settings):
    with orm:
        await populate(10, HASH_KEY)
    made = await create(client, **NEWSLETTER)
    await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)
    await drain(client)
    [message, _] = outbox(settings)
    url = message["List-Unsubscribe"].split("<", 1)[1].split(">", 1)[0]
    started = time.monotonic()
    resp = await client.post(url.split("127.0.0.1:8080", 1)[1],
                             data={"List-Unsubscribe": "One-Click"})
    assert resp.status == 200 and time.monotonic() - started < 5
    status = await (await client.get(f"/v1/campaigns/{made['id']}", headers=ADMIN)).json()
    assert status["unsubscribed"] == 1



# -- email and SMS together: no phone, quiet hours ---------------------------------------


def zones_now() -> tuple[str, str]:
    """A zone where it is night now (quiet hours) and one where it is afternoon."""
    now = datetime.now(UTC)
    asleep = awake = None
    for offset in range(-12, 15):
        name = f"Etc/GMT{'+' if offset <= 0 else '-'}{abs(offset)}" if offset else "Etc/GMT"
        hour = (now + timedelta(hours=offset)).hour
        if asleep is None and 0 <= hour <= 5:
            asleep = name
        if awake is None and 11 <= hour <= 17:
            awake = name
    assert asleep and awake
    return asleep, awake


async def test_email_and_sms_each_follow_the_rules_and_quiet_hours(client, orm, settings):
    from notify.web.app import COURIER

    with orm:
        profiles = await populate(200, HASH_KEY)
        asleep, awake = zones_now()
        ids = await User.all().order_by("id").values_list("id", flat=True)
        await User.filter(id__in=ids[::2]).update(time_zone=asleep)
        await User.filter(id__in=ids[1::2]).update(time_zone=awake)
        night = set(ids[::2])
    made = await create(client, kind="notification", topic="email_notifications",
                        channels=["email", "sms"],
                        variables={"subject": "Parcel", "body": "Your parcel is on its way"})
    preview = await (await client.get(f"/v1/campaigns/{made['id']}/audience",
                                      headers=ADMIN)).json()
    with orm:
        by_email = await pure_reasons(HASH_KEY, "notification", "email_notifications",
                                      settings.topics["email_notifications"])
        by_sms = await pure_reasons(HASH_KEY, "notification", "sms_notifications",
                                    settings.topics["sms_notifications"], channel="sms")
    channels = {c["channel"]: (c["eligible"], c["excluded"]) for c in preview["channels"]}
    assert channels == {"email": tally(by_email), "sms": tally(by_sms)}
    # Quiet hours delay and never exclude: the preview counts the sleeping too.
    assert tally(by_sms) == (100, {"no_address": 20, "erased": 20, "not_subscribed": 60})

    await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)
    await drain(client)
    courier = client.app[COURIER]
    while await courier.deliver_due(200):
        pass
    texted = [json.loads(line) for line in settings.sms_log_file.read_text().splitlines()]
    with orm:
        phones = dict(await User.all().values_list("phone", "id"))
        waiting = await Delivery.filter(campaign_id=made["id"], channel="sms",
                                        status="queued")
    sms_eligible = {k for k, v in by_sms.items() if v is None}
    assert {phones[t["to"]] for t in texted} == sms_eligible - night
    assert {d.user_id for d in waiting} == sms_eligible & night
    assert all(d.next_attempt_at > store.now() + timedelta(hours=2) for d in waiting)
    assert texted[0]["body"] == "Your parcel is on its way"
    got_mail = {m["To"].split("@")[0] for m in outbox(settings)}
    assert {profiles[u] for u in got_mail} == {"subscribed", "subscribed_de"}
    status = await (await client.get(f"/v1/campaigns/{made['id']}", headers=ADMIN)).json()
    assert status["status"] == "sending"  # the sleeping are still owed their text
    assert status["counts"]["queued"] == len(waiting)


async def test_sms_deliveries_of_a_paused_campaign_wait(client, orm, settings):
    from notify.web.app import COURIER

    with orm:
        await populate(20, HASH_KEY)
        await User.all().update(time_zone=zones_now()[1])
    made = await create(client, kind="notification", topic="sms_notifications",
                        channels=["sms"], variables={"body": "Hello"})
    await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)
    with orm:
        # Claimed by a worker before the pause, delivered after it: held, not sent.
        [delivery] = await postman.claim("sms", 1)
    await client.post(f"/v1/campaigns/{made['id']}/pause", headers=ADMIN)
    with orm:
        await client.app[COURIER].deliver(delivery)
        assert (await Delivery.get(id=delivery.id)).status == "held"
        assert await Delivery.filter(campaign_id=made["id"], status="held").count() == 10
    assert not settings.sms_log_file.exists()
    await client.post(f"/v1/campaigns/{made['id']}/cancel", headers=ADMIN)
    with orm:
        assert await Delivery.filter(campaign_id=made["id"], status="cancelled").count() == 10


async def test_sms_campaign_variables_are_checked_when_it_is_created(client, orm):
    long = await client.post("/v1/campaigns", headers=ADMIN, json={
        "name": "x", "kind": "notification", "topic": "sms_notifications",
        "channels": ["sms"], "variables": {"body": "x" * 500}})
    assert long.status == 422
    assert "SMS" in (await long.json())["detail"]
    missing = await client.post("/v1/campaigns", headers=ADMIN, json={
        "name": "x", "kind": "notification", "topic": "sms_notifications",
        "channels": ["sms"]})
    assert missing.status == 422


async def test_metrics_show_deliveries_queue_latency_and_unsubscribes(client, orm, settings):
    with orm:
        await populate(30, HASH_KEY)
    made = await create(client, **NEWSLETTER)
    await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)
    queued = await (await client.get("/metrics", headers=APP)).text()
    assert 'notify_deliveries{channel="email",status="queued"} 6.0' in queued
    assert 'notify_queue_depth{channel="email"} 6.0' in queued
    sends_before = _sample(queued, 'notify_send_seconds_count{channel="email"}')
    await drain(client)
    [message, *_] = outbox(settings)
    url = message["List-Unsubscribe"].split("<", 1)[1].split(">", 1)[0]
    await client.post(url.split("127.0.0.1:8080", 1)[1], data={"List-Unsubscribe": "One-Click"})
    resp = await client.get("/metrics", headers=APP)
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    assert 'notify_deliveries{channel="email",status="sent"} 6.0' in text
    assert 'notify_queue_depth{channel="email"} 0.0' in text
    assert 'notify_unsubscribes_total{source="one_click"} 1.0' in text
    # The histogram lives as long as the process (other tests sent too): six more.
    assert _sample(text, 'notify_send_seconds_count{channel="email"}') - sends_before == 6
    assert (await client.get("/metrics")).status == 401


def _sample(exposition: str, name: str) -> float:
    """The value of one sample in a Prometheus text exposition; 0 when it is absent."""
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- races and edges found in review -----------------------------------------------------


async def test_a_cancelled_or_partly_sent_notice_leaves_the_rest_for_a_later_one(client, orm,
                                                                                settings):
    with orm:
        await populate(100, HASH_KEY)
    await publish(client)
    first = await create(client, kind="policy_notice", policy_version="2026-12")
    await client.post(f"/v1/campaigns/{first['id']}/send", headers=ADMIN)
    await client.app[POSTMAN].deliver_due(5)
    await client.post(f"/v1/campaigns/{first['id']}/cancel", headers=ADMIN)
    second = await create(client, kind="policy_notice", policy_version="2026-12")
    with orm:
        notified = set(await Delivery.filter(campaign_id=first["id"], status="sent")
                       .values_list("user_id", flat=True))
        assert len(notified) == 5
        campaign = await Campaign.get(id=second["id"])
        sql = await audience.reasons_by_user(campaign, "email", {"email": None})
        pure = await pure_reasons(HASH_KEY, "policy_notice", None, None,
                                  eligibility.Notice(material=True))
    # The pure rule, told who was notified, gives the same answer as the database.
    for user_id in notified:
        assert pure[user_id] is None
        pure[user_id] = "already_notified"
    assert sql == pure
    sent = await (await client.post(f"/v1/campaigns/{second['id']}/send",
                                    headers=ADMIN)).json()
    assert sent["enqueued"] == 60 - 5
    await drain(client)
    assert len({m["To"] for m in outbox(settings)}) == len(outbox(settings)) == 60


async def batch_read_while_paused(client, orm, users: int,  # noqa: ANN001
                                  size: int) -> tuple[dict, list[Delivery], postman.Batch]:
    """A campaign sent, a batch of ``size`` claimed, the campaign paused, and the batch's
    checks read while it is paused."""
    with orm:
        await populate(users, HASH_KEY)
    made = await create(client, **NEWSLETTER)
    await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)
    with orm:
        batch = await client.app[POSTMAN].claim(size)
    await client.post(f"/v1/campaigns/{made['id']}/pause", headers=ADMIN)
    with orm:
        known = await postman.Batch.load(client.app[POSTMAN].settings, batch)
    return made, batch, known


async def test_pause_and_resume_while_a_batch_is_out_leave_nothing_held(client, orm):
    # The batch is read while paused ...
    made, batch, known = await batch_read_while_paused(client, orm, 50, 10)
    postman_ = client.app[POSTMAN]
    with orm:
        paused_view = await postman.claim("email", 10)  # nothing due while paused
        assert paused_view == []
    await client.post(f"/v1/campaigns/{made['id']}/resume", headers=ADMIN)
    with orm:
        # ... and is written after the resume: queued again, not held for ever.
        for delivery in batch:
            await postman_._deliver_one(delivery, known, store.now())
        await postman.record_outcomes(batch)
        assert {d.status for d in await Delivery.filter(id__in=[d.id for d in batch])} == {
            "queued"}
    await drain(client)
    status = await (await client.get(f"/v1/campaigns/{made['id']}", headers=ADMIN)).json()
    assert status["status"] == "done" and status["counts"] == {"sent": 10}


async def test_a_report_arriving_during_the_batch_is_not_overwritten(client, orm, settings):
    from notify import bounces

    with orm:
        await populate(20, HASH_KEY)
    made = await create(client, **NEWSLETTER)
    await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)
    with orm:
        batch = await client.app[POSTMAN].claim(10)
        await bounces.record_complaint(settings, batch[0], None, "spam, quickly")
        await client.app[POSTMAN].deliver_batch(batch)
        statuses = Counter(await Delivery.filter(campaign_id=made["id"])
                           .values_list("status", flat=True))
    assert statuses == {"sent": 3, "complained": 1}


async def newsletter_claimed(client, orm, size: int, users: int = 20  # noqa: ANN001
                             ) -> list[Delivery]:
    """A batch of ``size`` of a newsletter's deliveries to ``users`` people, claimed."""
    with orm:
        await populate(users, HASH_KEY)
    made = await create(client, **NEWSLETTER)
    await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)
    with orm:
        return await client.app[POSTMAN].claim(size)


async def sent_not_recorded(client, orm, size: int) -> list[Delivery]:  # noqa: ANN001
    """A batch of a newsletter's deliveries, claimed and sent, their outcomes on the
    objects and not yet written."""
    batch = await newsletter_claimed(client, orm, size)
    postman_ = client.app[POSTMAN]
    with orm:
        known = await postman.Batch.load(postman_.settings, batch)
        for delivery in batch:
            await postman_._deliver_one(delivery, known, store.now())
    return batch


async def test_a_takeover_between_the_send_and_its_record_is_not_overwritten(client, orm):
    # Sent, then the lease taken over by another worker before the outcomes are written
    # (the sender hung between the two): the new owner's claim stands, the rest is written.
    batch = await sent_not_recorded(client, orm, 4)
    with orm:
        theirs = store.now() + timedelta(minutes=5)
        await Delivery.filter(id=batch[0].id).update(lease_until=theirs, takeovers=1)
        await postman.record_outcomes(batch)
        rows = {d.id: d for d in await Delivery.filter(id__in=[d.id for d in batch])}
    assert (rows[batch[0].id].status, rows[batch[0].id].lease_until) == ("sending", theirs)
    assert {(rows[d.id].status, rows[d.id].lease_until) for d in batch[1:]} == {("sent", None)}
    # What was written is what the objects say; the one not written keeps our claim's lease.
    assert batch[1].lease_until is None and batch[0].lease_until not in (None, theirs)


@pytest.mark.parametrize("database_url", [pytest.param("postgres",
                                                       marks=pytest.mark.postgres)],
                         indirect=True)
async def test_outcomes_wait_for_a_takeover_or_report_in_flight_and_let_them_stand(
        client, orm, database_url):
    """The outcomes' one UPDATE (postman._record_final) meets a transaction that took one
    row over, reported on another and touched a third, not yet committed: it waits, then
    reads its WHERE again on what committed (READ COMMITTED). The takeover and the report
    stand; the row changed elsewhere and the untouched ones get their outcomes."""
    import asyncpg

    batch = await sent_not_recorded(client, orm, 4)
    taken, reported, touched, untouched = (d.id for d in batch)
    other = await asyncpg.connect(database_url.replace("asyncpg://", "postgres://"))
    try:
        racing = other.transaction()
        await racing.start()
        await other.execute("UPDATE deliveries SET lease_until = lease_until + interval "
                            "'5 minutes', takeovers = 1 WHERE id = $1", taken)
        await other.execute("UPDATE deliveries SET status = 'complained' WHERE id = $1",
                            reported)
        await other.execute("""UPDATE deliveries SET context = '{"noted": 1}' WHERE id = $1""",
                            touched)  # a column that outcomes do not write
        with orm:
            recording = asyncio.ensure_future(postman.record_outcomes(batch))
            await asyncio.sleep(0.5)
            assert not recording.done()  # waiting for the row locks
            await racing.commit()
            await recording
        rows = {r["id"]: (r["status"], r["lease_until"] is None, r["noted"])
                for r in await other.fetch("SELECT id, status, lease_until, context->>'noted' "
                                           "AS noted FROM deliveries WHERE id = ANY($1)", list(
                                               (taken, reported, touched, untouched)))}
    finally:
        await other.close()
    assert rows == {taken: ("sending", False, None), reported: ("complained", False, None),
                    touched: ("sent", True, "1"), untouched: ("sent", True, None)}


class _FailsFor:
    """The outbox channel, but one recipient's send raises what no channel should (a bug,
    a lost database while recording its bounce): the fault the batch must contain. One
    send at a time: the one that raised must not end the sending of the rest (with
    several senders, the others would take the rest over and hide it)."""

    concurrency = 1

    def __init__(self, channel, address: str) -> None:  # noqa: ANN001
        self.channel, self.address = channel, address

    async def send(self, envelope):  # noqa: ANN001, ANN201
        if self.address in envelope.rcpt_to:
            raise RuntimeError("a bug in one send")
        return await self.channel.send(envelope)


async def test_one_send_raising_loses_neither_the_others_nor_their_outcomes(client, orm,
                                                                            settings):
    batch = await newsletter_claimed(client, orm, 8, users=40)
    postman_ = client.app[POSTMAN]
    with orm:
        unlucky = (await User.get(id=batch[1].user_id)).email
        channel, postman_.channel = postman_.channel, _FailsFor(postman_.channel, unlucky)
        try:
            with pytest.raises(RuntimeError, match="a bug in one send"):
                await postman_.deliver_batch(batch)
        finally:
            postman_.channel = channel
        rows = {d.id: d.status for d in await Delivery.filter(id__in=[d.id for d in batch])}
    # The one whose send raised keeps its claim, to be taken over; every other message of
    # the batch, before and after it, was sent and recorded.
    assert rows.pop(batch[1].id) == "sending"
    assert set(rows.values()) == {"sent"} and len(rows) == 7
    assert len(outbox(settings)) == 7


async def test_a_worker_whose_lease_ran_out_neither_sends_nor_overwrites(client, orm, settings):
    with orm:
        await populate(40, HASH_KEY)
    made = await create(client, **NEWSLETTER)
    await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)
    slow, fast = client.app[POSTMAN], client.app[POSTMAN]
    with orm:
        stale = await slow.claim(8)
        past = store.now() - timedelta(seconds=1)
        # Time passes: the slow worker hung past its lease.
        await Delivery.filter(id__in=[d.id for d in stale]).update(lease_until=past)
        for delivery in stale:
            delivery.lease_until = past
        taken = await fast.claim(8)  # another worker takes the claims over
        assert {d.id for d in taken} == {d.id for d in stale}
        await fast.deliver_batch(taken)
        await slow.deliver_batch(stale)  # wakes up: sends nothing, overwrites nothing
        rows = await Delivery.filter(campaign_id=made["id"])
    assert len(outbox(settings)) == 8
    assert {(d.status, d.takeovers, d.attempts) for d in rows} == {("sent", 1, 1)}
    status = await (await client.get(f"/v1/campaigns/{made['id']}", headers=ADMIN)).json()
    assert status["possible_duplicates"] == 8


async def test_resume_after_a_long_pause_sends_instead_of_failing(client, orm, settings):
    with orm:
        await populate(20, HASH_KEY)
    made = await create(client, **NEWSLETTER)
    await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)
    await client.post(f"/v1/campaigns/{made['id']}/pause", headers=ADMIN)
    with orm:  # the pause outlasted the retry period
        await Delivery.filter(campaign_id=made["id"]).update(
            deadline=store.now() - timedelta(hours=1))
    await client.post(f"/v1/campaigns/{made['id']}/resume", headers=ADMIN)
    await drain(client)
    status = await (await client.get(f"/v1/campaigns/{made['id']}", headers=ADMIN)).json()
    assert status["counts"] == {"sent": 4}


async def test_resuming_a_guarded_campaign_starts_the_guards_count_again(client, orm,
                                                                         settings):
    from notify import bounces

    with orm:
        await populate(100, HASH_KEY)
    made = await create(client, **NEWSLETTER)
    await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)
    await client.app[POSTMAN].deliver_due(10)
    guarded = dataclasses.replace(settings, guard_min_sent=5)
    with orm:
        first = await Delivery.filter(campaign_id=made["id"], status="sent").first()
        await bounces.record_complaint(settings, first, None, "spam")
        assert await campaigns.check_guards(guarded) == 1
    await client.post(f"/v1/campaigns/{made['id']}/resume", headers=ADMIN)
    await client.app[POSTMAN].deliver_due(10)
    with orm:
        assert await campaigns.check_guards(guarded) == 0  # nothing new went wrong
        assert (await Campaign.get(id=made["id"])).status == "sending"


@pytest.mark.parametrize("body, field", [
    ({**NEWSLETTER, "variables": {"t": "x", "subject": "s", "body": "b"}}, "body.variables"),
    ({**NEWSLETTER, "variables": {"locale": "x", "subject": "s", "body": "b"}},
     "body.variables"),
    ({**NEWSLETTER, "send_at": "2026-12-01T10:00:00"}, "body.send_at"),
    ({**NEWSLETTER, "send_at": "0001-01-01T00:00:00+14:00"}, "body.send_at"),
    ({**NEWSLETTER, "audience": {"created_before": "0001-01-01T00:00:00+14:00"}},
     "body.audience.created_before"),
    ({**NEWSLETTER, "template": "preferences_link"}, "body.template"),
])
async def test_odd_campaign_values_are_refused_not_crashed_on(client, orm, body, field):
    before = await snapshot(orm)
    resp = await client.post("/v1/campaigns", json={"name": "x", **body}, headers=ADMIN)
    assert resp.status == 422, await resp.text()
    assert field in [e["field"] for e in (await resp.json())["errors"]]
    assert await snapshot(orm) == before


async def test_policy_dates_at_the_calendars_edge_are_refused(client, orm):
    for when in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        resp = await client.post("/v1/policies", json={**POLICY, "effective_at": when},
                                 headers=ADMIN)
        assert resp.status == 422, when


async def test_audience_times_with_any_offset_select_the_same_users(client, orm):
    with orm:
        await populate(60, HASH_KEY)
        cut = store.now() - timedelta(days=10, hours=3)
    counts = set()
    for offset in (0, 5, -8):
        zone = timezone(timedelta(hours=offset))
        made = await create(client, **NEWSLETTER,
                            audience={"created_after": cut.astimezone(zone).isoformat()})
        preview = await (await client.get(f"/v1/campaigns/{made['id']}/audience",
                                          headers=ADMIN)).json()
        counts.add((preview["eligible"], tuple(sorted(
            preview["channels"][0]["excluded"].items()))))
    assert len(counts) == 1


async def test_the_database_itself_refuses_a_second_notice_of_a_version(client, orm):
    from tortoise.exceptions import IntegrityError

    with orm:
        await populate(1, HASH_KEY)
        user = await User.first()
        policy = await campaigns.publish_policy(
            {**POLICY, "effective_at": store.now()}, "test")
        when = store.now()
        row = {"user_id": user.id, "channel": "email", "kind": "policy_notice",
               "notice_of_id": policy.id, "next_attempt_at": when, "deadline": when}
        await Delivery.create(**row)
        await Delivery.create(**{**row, "notice_of_id": None})  # not a notice: not bound
        with pytest.raises(IntegrityError):
            await Delivery.create(**row)


class Interrupted(Exception):
    pass


async def interrupted_enqueue(campaign_id: int, parts: int) -> audience.Enqueued:
    """A send that fails after the enqueue: its transaction rolls back (on PostgreSQL the
    enqueue's parts have committed on their own by then)."""
    campaign = await Campaign.get(id=campaign_id)
    with pytest.raises(Interrupted):
        async with in_transaction():
            done = await audience.enqueue(campaign, {"email": "newsletter"},
                                          now=store.now(), retry_hours=1, parts=parts)
            raise Interrupted
    return done


async def test_an_interrupted_enqueue_sends_nothing_until_the_campaign_is_sent(client, orm,
                                                                               settings):
    """On PostgreSQL the enqueue's parts commit before the campaign is marked sending; a
    send that fails after them leaves deliveries that no worker takes, and sending again
    adds only what is missing: everyone eligible gets one message."""
    with orm:
        profiles = await populate(400, HASH_KEY)
    made = await create(client, **NEWSLETTER)
    with orm:
        done = await interrupted_enqueue(made["id"], parts=3)
        assert done.added == done.eligible == 80
        assert (await Campaign.get(id=made["id"])).status == "draft"
    assert await drain(client) == 0 and outbox(settings) == []
    sent = await (await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)).json()
    assert (sent["status"], sent["enqueued"]) == ("sending", 80)
    assert await drain(client) == 80
    received = Counter(m["To"].split("@")[0] for m in outbox(settings))
    assert set(received) == {u for u, p in profiles.items()
                             if p in ("subscribed", "subscribed_de")}
    assert set(received.values()) == {1}


async def test_the_enqueue_parts_together_find_what_one_statement_finds(client, orm,
                                                                        settings):
    with orm:
        await populate(1000, HASH_KEY)
    made = [await create(client, **NEWSLETTER) for _ in range(2)]
    with orm:
        one, many = [await Campaign.get(id=m["id"]) for m in made]
        single = await audience.enqueue(one, {"email": "newsletter"}, now=store.now(),
                                        retry_hours=1, parts=1)
        split = await audience.enqueue(many, {"email": "newsletter"}, now=store.now(),
                                       retry_hours=1, parts=7)
        assert dataclasses.asdict(single) == dataclasses.asdict(split)
        assert single.added == 200 and sum(single.excluded.values()) == 800
        users = [{d.user_id for d in await Delivery.filter(campaign_id=c.id)}
                 for c in (one, many)]
        assert users[0] == users[1] and len(users[0]) == 200


@pytest.mark.parametrize("database_url", [pytest.param("postgres",
                                                       marks=pytest.mark.postgres)],
                         indirect=True)
async def test_a_notice_racing_another_notice_of_its_version_skips_whom_that_took(
        client, orm, settings, database_url):
    """The enqueue leaves a user out when another notice of the same version was queued
    for them by a transaction that committed after the enqueue's statement began: the
    unique index refuses the second, and the part is run again, tolerating it."""
    import asyncpg

    with orm:
        await populate(40, HASH_KEY)
    await publish(client, effective_at="2020-01-01T00:00:00Z")
    first = await create(client, kind="policy_notice", policy_version="2026-12")
    second = await create(client, kind="policy_notice", policy_version="2026-12")
    with orm:
        policy = await campaigns.PolicyVersion.get(version="2026-12")
        target = (await User.filter(email__isnull=False, email_verified=True,
                                    erased_at__isnull=True).order_by("id").first())
    other = await asyncpg.connect(database_url.replace("asyncpg://", "postgres://"))
    try:
        # Another send's uncommitted notice to one user: our insert of that user waits
        # on it, and fails on the unique index once it commits.
        racing = other.transaction()
        await racing.start()
        await other.execute(
            "INSERT INTO deliveries (user_id, campaign_id, notice_of_id, channel, kind, "
            "context, status, attempts, takeovers, next_attempt_at, deadline, created_at, "
            "updated_at) VALUES ($1, $2, $3, 'email', 'policy_notice', '{}', 'queued', 0, "
            "0, now(), now(), now(), now())", target.id, first["id"], policy.id)
        sending = asyncio.ensure_future(client.post(f"/v1/campaigns/{second['id']}/send",
                                                    headers=ADMIN))
        await asyncio.sleep(0.5)
        await racing.commit()
        resp = await sending
    finally:
        await other.close()
    assert resp.status == 200, await resp.text()
    sent = await resp.json()
    with orm:
        notices = await Delivery.filter(notice_of_id=policy.id).values_list("user_id",
                                                                            "campaign_id")
    assert notices.count((target.id, first["id"])) == 1
    assert (target.id, second["id"]) not in notices
    assert sent["enqueued"] == len(notices) - 1 and sent["enqueued"] > 0


async def test_a_campaign_cancelled_while_a_batch_is_out_leaves_nothing_queued(client, orm):
    """Workers take only deliveries of sending campaigns: a delivery of a cancelled
    campaign that its batch hands back as held (it was paused when read) or queued (for
    a retry) is cancelled, or it would wait for ever."""
    made, batch, known = await batch_read_while_paused(client, orm, 20, 5)
    sender = client.app[POSTMAN]
    assert (await client.post(f"/v1/campaigns/{made['id']}/cancel",
                              headers=ADMIN)).status == 200
    with orm:
        for delivery in batch:
            await sender._deliver_one(delivery, known, store.now())
        batch[0].status = "queued"  # as a temporary failure hands it back for a retry
        await postman.record_outcomes(batch)
        await drain(client)
        rows = await Delivery.filter(campaign_id=made["id"]).values_list("status",
                                                                        flat=True)
    assert set(rows) == {"cancelled"}


async def test_a_resent_campaign_nobody_is_eligible_for_works_through_what_was_left(
        client, orm, settings):
    """PostgreSQL: an interrupted send leaves queued deliveries; sent again when nobody is
    eligible any more, the campaign is sending until those are skipped, then done."""
    with orm:
        await populate(100, HASH_KEY)
    made = await create(client, **NEWSLETTER)
    with orm:
        await interrupted_enqueue(made["id"], parts=2)
        left = await Delivery.filter(campaign_id=made["id"]).count()
        await Consent.filter(topic="newsletter").update(state="unsubscribed")
    sent = await (await client.post(f"/v1/campaigns/{made['id']}/send", headers=ADMIN)).json()
    assert sent["enqueued"] == 0
    assert sent["status"] == ("sending" if left else "done")  # SQLite rolled them back
    await drain(client)
    with orm:
        rows = await Delivery.filter(campaign_id=made["id"]).values_list("status",
                                                                        "skip_reason")
        assert (await Campaign.get(id=made["id"])).status == "done"
    assert len(rows) == left and set(rows) <= {("skipped", "not_subscribed")}
    assert outbox(settings) == []


@pytest.mark.parametrize("database_url", [pytest.param("postgres",
                                                       marks=pytest.mark.postgres)],
                         indirect=True)
async def test_a_pool_of_one_connection_enqueues_in_the_callers_transaction(client, orm,
                                                                            database_url):
    """The enqueue's parts take connections beside the send's own; with `?maxsize=1` in
    the URL there are none, and the one part runs in the send's transaction."""
    from notify.db import close_db, open_db

    with orm:
        await populate(100, HASH_KEY)
    made = await create(client, **NEWSLETTER)
    single = await open_db(database_url + "?maxsize=1")
    try:
        with single:
            campaign = await Campaign.get(id=made["id"])

            async def send() -> audience.Enqueued:
                async with in_transaction():
                    return await audience.enqueue(campaign, {"email": "newsletter"},
                                                  now=store.now(), retry_hours=1, parts=2)

            done = await asyncio.wait_for(send(), timeout=30)
    finally:
        await close_db(single)
    assert done.added == done.eligible == 20
    with orm:
        assert await Delivery.filter(campaign_id=made["id"]).count() == 20
