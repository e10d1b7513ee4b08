"""The public pages over HTTP, as a mail provider and a person's browser use them."""

from __future__ import annotations

import email
from email import policy
from urllib.parse import urlsplit

import pytest
from aiohttp import FormData
from support import ADMIN, APP, snapshot

from notify.models import ConsentEvent, PolicyVersion, User
from notify.tokens import Link, Purpose, sign

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


async def subscribe(client, topic, user="alice", **extra):
    resp = await client.put(f"/v1/users/{user}/consents/{topic}",
                            json={"subscribed": True, **extra}, headers=APP)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def links(client, user="alice"):
    resp = await client.get(f"/v1/users/{user}/links", headers=APP)
    assert resp.status == 200
    return await resp.json()


def path(url: str) -> str:
    return urlsplit(url).path


async def states(client, user="alice"):
    resp = await client.get(f"/v1/users/{user}/consents", headers=APP)
    return {c["topic"]: c["state"] for c in (await resp.json())["consents"]}


async def events(orm, user="alice"):
    with orm:
        found = await User.get(external_id=user)
        return await ConsentEvent.filter(user_id=found.id).order_by("id")


def outbox(settings):
    return sorted(settings.outbox_dir.glob("*.eml")) if settings.outbox_dir.exists() else []


def read_mail(file):
    return email.message_from_bytes(file.read_bytes(), policy=policy.default)


# -- one-click -------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
async def test_one_click_post_unsubscribes_as_a_mail_provider_sends_it(client, orm, alice,
                                                                       encoding):
    await subscribe(client, "email_notifications")
    url = path((await links(client))["unsubscribe"]["email_notifications"])
    headers = {"User-Agent": "GoogleOneClick/1.0"}
    if encoding == "urlencoded":
        data = "List-Unsubscribe=One-Click"
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    else:
        data = FormData(default_to_multipart=True)
        data.add_field("List-Unsubscribe", "One-Click")
    resp = await client.post(url, allow_redirects=False, headers=headers, data=data)
    assert resp.status == 200
    assert await resp.text() == "Sie sind abgemeldet.\n"  # Alice reads German
    assert (await states(client))["email_notifications"] == "unsubscribed"
    last = (await events(orm))[-1]
    assert (last.source, last.to_state, last.user_agent) == (
        "one_click", "unsubscribed", "GoogleOneClick/1.0")
    assert last.ip == "127.0.0.1"

    again = await client.post(url, allow_redirects=False, **(
        {"data": "List-Unsubscribe=One-Click",
         "headers": {"Content-Type": "application/x-www-form-urlencoded"}}))
    assert again.status == 200  # idempotent
    assert len(await events(orm)) == 2


async def test_get_of_an_unsubscribe_link_changes_nothing(client, orm, alice):
    await subscribe(client, "email_notifications")
    url = path((await links(client))["unsubscribe"]["email_notifications"])
    before = await snapshot(orm)
    for _ in range(3):
        resp = await client.get(url)
        assert resp.status == 200
        assert "text/html" in resp.headers["Content-Type"]
    assert await snapshot(orm) == before


async def test_all_topics_link_withdraws_every_topic(client, alice):
    await subscribe(client, "email_notifications")
    await subscribe(client, "sms_notifications")
    url = path((await links(client))["unsubscribe"]["*"])
    resp = await client.post(url, data=ONE_CLICK)
    assert resp.status == 200
    assert set((await states(client)).values()) == {"unsubscribed"}


def bad_tokens(good: str, secret_keys) -> dict[str, str]:
    kid, payload, mac = good.split(".")
    return {
        "forged": sign(Link("h", Purpose.UNSUBSCRIBE), [("k1", b"x" * 40)]),
        "altered": f"{kid}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{mac}",
        "truncated": good[: len(good) // 2],
        "unknown key": sign(Link("h", Purpose.UNSUBSCRIBE), [("old", b"y" * 40)]),
        "random": "Zm9vYmFy.YmF6.cXV4",
        "wrong purpose": sign(Link(payload, Purpose.CONFIRM), secret_keys),
        "junk": "%00%ff<script>",
    }


async def test_bad_tokens_never_change_state_and_never_5xx(client, orm, alice, settings):
    await subscribe(client, "email_notifications")
    good = path((await links(client))["unsubscribe"]["email_notifications"]).rsplit("/", 1)[1]
    before = await snapshot(orm)
    for name, token in bad_tokens(good, settings.secret_keys).items():
        for page in ("u", "preferences", "confirm"):
            for method, body in (("GET", None), ("POST", ONE_CLICK),
                                 ("POST", {"action": "unsubscribe"}),
                                 ("POST", {"action": "save"}), ("POST", {"action": "confirm"})):
                resp = await client.request(method, f"/{page}/{token}", data=body)
                assert resp.status == 404, (name, page, method, resp.status)
                assert "not valid" in await resp.text(), name
    assert await snapshot(orm) == before


async def test_an_invalid_link_says_nothing_about_the_user(client, alice):
    forged = sign(Link("h", Purpose.UNSUBSCRIBE), [("k1", b"x" * 40)])
    resp = await client.get(f"/u/{forged}")
    text = await resp.text()
    assert "alice" not in text.lower() and "example.com" not in text


# -- the unsubscribe page ----------------------------------------------------------------


async def test_unsubscribe_page_button_then_undo(client, orm, alice):
    await subscribe(client, "sms_notifications")
    url = path((await links(client))["unsubscribe"]["sms_notifications"])
    page = await client.get(url)
    text = await page.text()
    assert "SMS-Benachrichtigungen" in text  # Alice's locale is German
    assert 'method="post"' in text and "/preferences/" in text

    done = await client.post(url, data={"action": "unsubscribe"})
    assert done.status == 200
    assert "Sie sind abgemeldet" in await done.text()
    assert (await states(client))["sms_notifications"] == "unsubscribed"
    assert (await events(orm))[-1].source == "unsubscribe_page"

    undo = await client.post(url, data={"action": "undo"})
    assert undo.status == 200
    assert (await states(client))["sms_notifications"] == "subscribed"
    last = (await events(orm))[-1]
    assert (last.source, last.note, last.to_state) == ("unsubscribe_page", "undo", "subscribed")


async def test_undo_never_subscribes_topics_the_user_did_not_have(client, alice):
    await subscribe(client, "sms_notifications")
    url = path((await links(client))["unsubscribe"]["*"])
    await client.post(url, data={"action": "unsubscribe"})
    await client.post(url, data={"action": "undo"})
    assert await states(client) == {"email_notifications": "unsubscribed",
                                    "sms_notifications": "subscribed",
                                    "newsletter": "unsubscribed"}


async def test_pages_send_protective_headers(client, alice):
    url = path((await links(client))["preferences"])
    for target in (url, "/policy", "/preferences", "/u/nonsense"):
        resp = await client.get(target)
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert "noindex" in resp.headers["X-Robots-Tag"]
        csp = resp.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src" not in csp


# -- preference center and double opt-in -------------------------------------------------


async def test_preference_center_saves_and_sends_a_confirmation_for_double_opt_in(
        client, orm, alice, settings):
    url = path((await links(client))["preferences"])
    page = await (await client.get(url)).text()
    assert "Ihre Einstellungen" in page
    assert "a***@example.com" in page and "alice@example.com" not in page  # masked

    form = [("action", "save"), ("topic", "email_notifications"), ("topic", "newsletter")]
    saved = await client.post(url, data=form, allow_redirects=False)
    assert saved.status == 303  # post/redirect/get: a reload does not post again
    assert saved.headers["Location"] == url + "?saved=confirm"
    shown = await (await client.get(saved.headers["Location"])).text()
    assert "gespeichert" in shown and "Bestätigung" in shown or "bestätigen" in shown
    assert await states(client) == {"email_notifications": "subscribed",
                                    "sms_notifications": None, "newsletter": "pending"}
    assert {e.source for e in await events(orm)} == {"preference_center"}

    [sent] = outbox(settings)
    mail = read_mail(sent)
    assert mail["To"].addresses[0].addr_spec == "alice@example.com"
    assert "Newsletter" in mail["Subject"]
    text = mail.get_body(("plain",)).get_content()
    confirm_url = next(word for word in text.split() if "/confirm/" in word)

    # Opening the confirmation link confirms nothing; only its button does.
    before = await snapshot(orm)
    page = await client.get(path(confirm_url))
    assert page.status == 200 and 'value="confirm"' in await page.text()
    assert await snapshot(orm) == before
    done = await client.post(path(confirm_url), data={"action": "confirm"})
    assert "bestätigt" in await done.text()
    assert (await states(client))["newsletter"] == "subscribed"
    assert (await events(orm))[-1].source == "confirmation"

    # A second click on the link changes nothing more.
    again = await client.post(path(confirm_url), data={"action": "confirm"})
    assert again.status == 200
    assert len(await events(orm)) == 3

    everything = await client.post(url, data={"action": "unsubscribe_all"})
    assert everything.status == 200
    assert set((await states(client)).values()) <= {"unsubscribed", None}


async def test_api_subscribe_to_double_opt_in_sends_only_the_confirmation(client, alice,
                                                                          settings):
    body = await subscribe(client, "newsletter")
    assert body["state"] == "pending"
    [sent] = outbox(settings)
    assert "/confirm/" in read_mail(sent).get_body(("plain",)).get_content()


async def test_double_opt_in_without_email_is_refused(client, orm):
    await client.put("/v1/users/bob", json={"phone": "+4915123456780"}, headers=APP)
    before = await snapshot(orm)
    resp = await client.put("/v1/users/bob/consents/newsletter", json={"subscribed": True},
                            headers=APP)
    assert resp.status == 422
    assert await snapshot(orm) == before


async def test_confirmation_link_expires(client, orm, alice, settings):
    await subscribe(client, "newsletter")
    with orm:
        user = await User.get(external_id="alice")
    from datetime import UTC, datetime, timedelta

    old = sign(Link(user.handle, Purpose.CONFIRM, "newsletter"), settings.secret_keys,
               now=datetime.now(UTC) - timedelta(days=settings.pending_days + 2))
    resp = await client.post(f"/confirm/{old}", data={"action": "confirm"})
    assert resp.status == 404
    assert (await states(client))["newsletter"] == "pending"


async def test_pending_requests_expire(client, orm, alice, settings):
    from datetime import timedelta

    from notify import store
    from notify.models import Consent

    await subscribe(client, "newsletter")
    with orm:
        await Consent.filter(topic="newsletter").update(
            updated_at=store.now() - timedelta(days=settings.pending_days + 1))
        expired = await store.expire_pending(settings.topics, days=settings.pending_days,
                                             default_policy="1.0")
    assert expired == 1
    assert (await states(client))["newsletter"] == "unsubscribed"
    assert (await events(orm))[-1].source == "expiry"


# -- a way in without an old email -------------------------------------------------------


async def test_way_in_answers_the_same_for_known_and_unknown_addresses(client, orm, alice,
                                                                      settings):
    from notify.web.endpoints import POSTMAN

    known = await client.post("/preferences", data={"email": "Alice@Example.com"})
    unknown = await client.post("/preferences", data={"email": "nobody@example.com"})
    assert known.status == unknown.status == 200
    assert await known.text() == await unknown.text()
    assert not outbox(settings)  # queued: the sender sends it
    with orm:
        assert await client.app[POSTMAN].deliver_due() == 1
    [sent] = outbox(settings)
    assert read_mail(sent)["To"].addresses[0].addr_spec == "alice@example.com"
    assert "/preferences/" in read_mail(sent).get_body(("plain",)).get_content()


async def test_way_in_is_rate_limited_per_address(client, alice):
    statuses = [(await client.post("/preferences", data={"email": "x@example.com"})).status
                for _ in range(5)]
    assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429]
    bad = await client.post("/preferences", data={"email": "not an address"})
    assert bad.status == 422


# -- policy page and links API -----------------------------------------------------------


async def test_policy_page_lists_versions_newest_first(client, orm):
    from datetime import UTC, datetime

    with orm:
        for version, year in (("2025-01", 2025), ("2026-01", 2026)):
            await PolicyVersion.create(version=version, title=f"Policy {year}",
                                       summary=f"Changes of {year}", url="https://example.com/p",
                                       effective_at=datetime(year, 1, 1, tzinfo=UTC),
                                       material=year == 2026, published_by="admin")
    text = await (await client.get("/policy", headers={"Accept-Language": "en"})).text()
    assert text.index("Policy 2026") < text.index("Policy 2025")
    assert "Affects your rights" in text and "Effective 2025-01-01" in text


async def test_links_api_gives_headers_for_the_main_apps_own_mail(client, alice, settings):
    found = await links(client)
    assert found["list_unsubscribe_post"] == "List-Unsubscribe=One-Click"
    assert found["list_unsubscribe"] == f"<{found['unsubscribe']['*']}>"
    assert found["preferences"].startswith(settings.public_url + "/preferences/")
    assert set(found["unsubscribe"]) == {*settings.topics, "*"}
    assert all(u.startswith(settings.public_url + "/u/") for u in found["unsubscribe"].values())
    assert "alice" not in str(found)


async def test_links_stop_working_after_erasure(client, alice):
    url = path((await links(client))["preferences"])
    await client.delete("/v1/users/alice", headers=ADMIN)
    assert (await client.get(url)).status == 404


async def test_way_in_is_rate_limited_per_ip(client):
    statuses = [(await client.post("/preferences", data={"email": f"p{n}@example.com"})).status
                for n in range(12)]
    assert statuses[:10] == [200] * 10 and statuses[10:] == [429, 429]


async def test_saving_the_page_again_never_sets_a_confirmed_subscription_back_to_pending(
        client, orm, alice, settings):
    await client.put("/v1/users/alice/consents/newsletter", headers=ADMIN, json={
        "subscribed": True, "source": "import", "note": "confirmed in the old system"})
    url = path((await links(client))["preferences"])
    before = await snapshot(orm)
    resp = await client.post(url, data=[("action", "save"), ("topic", "newsletter")])
    assert resp.status == 200
    assert await snapshot(orm) == before
    assert not outbox(settings)


async def test_topics_without_an_address_cannot_be_ticked(client, orm):
    await client.put("/v1/users/bob", json={"phone": "+4915123456780"}, headers=APP)
    url = path((await links(client, "bob"))["preferences"])
    page = await (await client.get(url)).text()
    assert 'id="topic-newsletter" name="topic" value="newsletter" ' \
           'aria-describedby="note-newsletter" disabled' in page
    before = await snapshot(orm)
    resp = await client.post(url, data=[("action", "save"), ("topic", "newsletter")],
                             allow_redirects=False)
    assert resp.status == 303  # no 422 page for a person; nothing to subscribe there
    assert await snapshot(orm) == before


async def test_undo_with_nothing_to_undo_says_so(client, orm, alice):
    url = path((await links(client))["unsubscribe"]["newsletter"])
    await client.post(url, data={"action": "unsubscribe"})
    before = await snapshot(orm)
    resp = await client.post(url, data={"action": "undo"}, headers={"Accept-Language": "en"})
    assert "Nichts rückgängig zu machen" in await resp.text()  # Alice's locale wins
    assert await snapshot(orm) == before


async def test_one_click_with_a_non_utf8_user_agent_still_withdraws(client, orm, alice):
    await subscribe(client, "email_notifications")
    url = path((await links(client))["unsubscribe"]["email_notifications"])
    resp = await client.post(url, data=ONE_CLICK,
                             headers={"User-Agent": "Mozilla \udcff\udcfe".encode(
                                 "utf-8", "surrogateescape").decode("latin-1")})
    assert resp.status == 200
    assert (await states(client))["email_notifications"] == "unsubscribed"


async def test_unreadable_forms_on_pages_are_not_5xx(client, orm, alice):
    url = path((await links(client))["preferences"])
    before = await snapshot(orm)
    for target in ("/u/garbage", "/confirm/garbage", url, "/preferences"):
        resp = await client.post(target, data=b"action=save",
                                 headers={"Content-Type": "application/x-www-form-urlencoded;"
                                          " charset=bogus"})
        assert resp.status < 500, target
    files = FormData()
    files.add_field("action", "save")
    files.add_field("topic", b"newsletter", filename="t.txt")
    assert (await client.post(url, data=files, allow_redirects=False)).status == 303
    way_in = FormData()
    way_in.add_field("email", b"alice@example.com", filename="e.txt")
    assert (await client.post("/preferences", data=way_in)).status == 422
    assert await snapshot(orm) == before


async def test_confirmation_mail_carries_no_preference_link(client, alice, settings):
    await subscribe(client, "newsletter")
    [sent] = outbox(settings)
    text = read_mail(sent).get_body(("plain",)).get_content()
    assert "/confirm/" in text and "/preferences/" not in text
