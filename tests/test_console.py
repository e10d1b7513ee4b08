"""The console through the aiohttp test client, on SQLite and PostgreSQL: sign-in and
sign-out, refused keys, CSRF and expiry refusals that change nothing, every page with
labelled inputs, every action audited, and clear messages for bad form input."""

from __future__ import annotations

import dataclasses
import time
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

import pytest
from console_support import Labels, csrf_for, csrf_in, sign_in
from support import ADMIN, APP_KEY, snapshot

from notify.console import CSP
from notify.console import session as sessions
from notify.models import AuditEntry, Campaign
from notify.settings import Settings

POLICY = {"version": "2026-12", "title": "Clearer retention", "summary": "Two years, not five.",
          "url": "https://example.com/privacy/2026-12", "effective_at": "2026-12-01T00:00",
          "material": "yes"}


def admin_kid(settings: Settings) -> str:
    return next(k.kid for k in settings.api_keys if k.scope == "admin")


async def seed(client, alice) -> dict:  # noqa: ANN001
    """A published policy, a draft newsletter, a subscribed user and a suppression."""
    await client.put("/v1/users/alice/consents/email_notifications",
                     json={"subscribed": True}, headers=ADMIN)
    resp = await client.post("/v1/policies", json={**POLICY, "effective_at":
                             "2026-12-01T00:00:00Z", "material": True}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    resp = await client.post("/v1/campaigns", json={
        "name": "Hello", "kind": "notification", "topic": "email_notifications",
        "variables": {"subject": "Hello", "body": "Hello there"}},
        headers=ADMIN)
    assert resp.status == 201, await resp.text()
    resp = await client.post("/v1/suppressions", json={"address": "gone@example.com",
                             "note": "asked by phone"}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    return await resp.json()


# -- sign-in, sign-out, sessions ---------------------------------------------------------


async def test_sign_in_with_admin_key_opens_the_dashboard(client, settings):
    resp = await sign_in(client)
    assert resp.status == 303 and resp.headers["Location"] == "/console"
    cookie = resp.cookies[sessions.COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert cookie["path"] == "/console" and not cookie["secure"]  # http public URL
    page = await client.get("/console")
    assert page.status == 200
    assert page.headers["Content-Security-Policy"] == CSP
    assert "frame-ancestors 'none'" in CSP and page.headers["X-Frame-Options"] == "DENY"
    text = await page.text()
    assert "Dashboard" in text and "Sends per minute" in text and "<svg" in text
    assert f"Signed in as <strong>{admin_kid(settings)}</strong>" in text
    # The public pages keep their script-free policy.
    assert "script-src" not in (await client.get("/policy")).headers["Content-Security-Policy"]


async def test_session_cookie_is_secure_behind_https(aiohttp_client, settings):
    from notify.web.app import make_app

    client = await aiohttp_client(make_app(dataclasses.replace(
        settings, public_url="https://notify.example.com")))
    # The test client speaks plain HTTP, as a proxy behind TLS termination does.
    resp = await client.get("/console/sign-in")
    assert resp.cookies[sessions.COOKIE]["secure"]


@pytest.mark.parametrize(("key", "status", "message"), [
    ("not-a-key-at-all-0000", 401, "That key is not valid."),
    ("", 401, "That key is not valid."),
    (APP_KEY, 403, "the console needs an admin key"),
])
async def test_wrong_and_app_keys_are_refused(client, orm, key, status, message):
    before = await snapshot(orm)
    resp = await sign_in(client, key)
    assert resp.status == status
    assert message in await resp.text()
    assert await snapshot(orm) == before  # not even an audit entry
    resp = await client.get("/console", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/console/sign-in")


async def test_sign_in_form_needs_its_csrf_token(client):
    await client.get("/console/sign-in")
    resp = await client.post("/console/sign-in", data={"key": "admin-key-0123456789abcdef"},
                             allow_redirects=False)
    assert resp.status == 403 and "security token" in await resp.text()
    assert (await client.get("/console", allow_redirects=False)).status == 303


async def test_pages_need_a_session_and_come_back_after_sign_in(client):
    resp = await client.get("/console/campaigns?x=1", allow_redirects=False)
    assert resp.status == 303
    where = urlsplit(resp.headers["Location"])
    assert where.path == "/console/sign-in"
    assert parse_qs(where.query) == {"next": ["/console/campaigns?x=1"]}
    page = await client.get(resp.headers["Location"])
    resp = await client.post("/console/sign-in", data={
        "csrf": csrf_in(await page.text()), "key": "admin-key-0123456789abcdef",
        "next": "/console/campaigns?x=1"}, allow_redirects=False)
    assert resp.headers["Location"] == "/console/campaigns?x=1"


async def test_sign_in_never_redirects_off_the_console(client):
    page = await client.get("/console/sign-in")
    resp = await client.post("/console/sign-in", data={
        "csrf": csrf_in(await page.text()), "key": "admin-key-0123456789abcdef",
        "next": "https://evil.example/"}, allow_redirects=False)
    assert resp.headers["Location"] == "/console"


async def test_sign_out_ends_the_session_and_is_audited(client, orm, settings):
    await sign_in(client)
    resp = await client.post("/console/sign-out", data={"csrf": await csrf_for(client)},
                             allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/console/sign-in"
    assert resp.cookies[sessions.COOKIE].value == ""
    assert (await client.get("/console", allow_redirects=False)).status == 303
    with orm:
        actions = [e.action for e in await AuditEntry.all().order_by("id")]
        assert actions == ["console.sign_in", "console.sign_out"]
        assert {e.key_id for e in await AuditEntry.all()} == {admin_kid(settings)}


def test_sessions_expire_when_idle_after_their_hours_and_with_their_key(settings):
    key = next(k for k in settings.api_keys if k.scope == "admin")
    now = time.time()
    fresh = sessions.signed_in(key, now)
    assert sessions.decode(settings, sessions.encode(settings, fresh, now), now) == fresh
    idle = settings.console_session_minutes * 60
    old = sessions.encode(settings, fresh, now - idle - 5)
    assert sessions.decode(settings, old, now) is None  # idle too long
    long_ago = sessions.signed_in(key, now - settings.console_session_hours * 3600 - 5)
    assert sessions.decode(settings, sessions.encode(settings, long_ago, now), now) is None
    without = dataclasses.replace(settings, api_keys=tuple(
        k for k in settings.api_keys if k.scope != "admin"))
    assert sessions.decode(without, sessions.encode(settings, fresh, now), now) is None
    assert sessions.decode(settings, "forged" + sessions.encode(settings, fresh), now) is None


# -- CSRF and expiry on every form -------------------------------------------------------

FORMS = [
    ("/console/policies/preview", POLICY),
    ("/console/policies", {**POLICY, "version": "2027-01"}),
    ("/console/campaigns", {"name": "x", "kind": "notification",
                            "topic": "email_notifications",
                            "variables": "subject=Hi\nbody=Hello"}),
    ("/console/campaigns/1/test", {"addresses": "team@example.org"}),
    ("/console/campaigns/1/send", {}),
    ("/console/campaigns/1/cancel", {}),
    ("/console/users/alice/withdraw", {"topic": "all", "note": "asked by phone"}),
    ("/console/suppressions", {"address": "x@example.com", "note": "asked"}),
    ("/console/users/lookup", {"q": "alice"}),
    ("/console/suppressions/search", {"address": "x@example.com"}),
    ("/console/sign-out", {}),
]


@pytest.mark.parametrize(("path", "data"), FORMS, ids=[p for p, _ in FORMS])
@pytest.mark.parametrize("token", ["missing", "wrong"])
async def test_forms_refuse_a_missing_or_wrong_csrf_token_and_change_nothing(
        client, orm, alice, path, data, token):
    await seed(client, alice)
    await sign_in(client)
    before = await snapshot(orm)
    body = dict(data) if token == "missing" else {**data, "csrf": "x" * 43}
    resp = await client.post(path, data=body, allow_redirects=False)
    assert resp.status == 403
    assert "Nothing was changed" in await resp.text()
    assert await snapshot(orm) == before


@pytest.mark.parametrize(("path", "data"), FORMS, ids=[p for p, _ in FORMS])
async def test_an_expired_session_goes_to_sign_in_and_changes_nothing(
        client, orm, alice, settings, path, data):
    await seed(client, alice)
    await sign_in(client)
    csrf = await csrf_for(client)
    key = next(k for k in settings.api_keys if k.scope == "admin")
    stale = dataclasses.replace(sessions.signed_in(key), csrf=csrf)
    old = time.time() - settings.console_session_minutes * 60 - 5
    cookie = SimpleCookie()
    cookie[sessions.COOKIE] = sessions.encode(settings, stale, old)
    cookie[sessions.COOKIE]["path"] = "/console"  # replaces the live one, same name and path
    client.session.cookie_jar.update_cookies(cookie, client.make_url("/console"))
    before = await snapshot(orm)
    resp = await client.post(path, data={**data, "csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"].startswith("/console/sign-in?next=")
    assert resp.headers["Location"].endswith("&expired=1")
    assert await snapshot(orm) == before
    page = await client.get(resp.headers["Location"])
    assert "Your session has ended" in await page.text()


# -- pages, actions, audit, bad input ----------------------------------------------------


async def test_every_page_renders_and_every_input_has_a_label(client, alice):
    await seed(client, alice)
    pages = ["/console/sign-in"]
    await sign_in(client)
    pages += ["/console", "/console/policies", "/console/policies/2026-12", "/console/campaigns",
              "/console/campaigns/new", "/console/campaigns/1", "/console/users",
              "/console/users/alice", "/console/suppressions",
              "/console/audit", "/console/audit?target=campaign:1"]
    controls = 0
    for path in pages:
        resp = await client.get(path)
        assert resp.status == 200, (path, await resp.text())
        parser = Labels()
        parser.feed(await resp.text())
        assert parser.unlabelled() == [], path
        controls += len(parser.controls)
    assert controls > 30  # the forms were there to check
    csrf = await csrf_for(client)
    # Look-ups are POSTs: an address never appears in a URL, only the main app's id.
    found = await client.post("/console/users/lookup", data={"q": "ALICE@example.com",
                                                             "csrf": csrf},
                              allow_redirects=False)
    assert (found.status, found.headers["Location"]) == (303, "/console/users/alice")
    text = await (await client.get(found.headers["Location"])).text()
    assert "User alice" in text and "alice@example.com" in text
    resp = await client.post("/console/suppressions/search",
                             data={"address": "gone@example.com", "csrf": csrf})
    text = await resp.text()
    assert resp.status == 200 and "asked by phone" in text and "manual" in text
    assert "gone@example.com" not in str(resp.url)


async def test_unknown_things_are_clear_404_pages(client):
    await sign_in(client)
    for path, words in (("/console/campaigns/99", "no campaign 99"),
                        ("/console/policies/nope", "no published policy version"),
                        ("/console/users/nobody", "no user with id")):
        resp = await client.get(path)
        assert resp.status == 404, path
        assert words in await resp.text()
    resp = await client.post("/console/users/lookup",
                             data={"q": "nobody@example.com", "csrf": await csrf_for(client)})
    assert resp.status == 404 and "no user with the id or email" in await resp.text()


async def test_console_actions_work_and_are_audited_with_the_key_name(client, orm, alice,
                                                                      settings):
    await client.put("/v1/users/alice/consents/email_notifications",
                     json={"subscribed": True}, headers=ADMIN)
    await sign_in(client)
    csrf = await csrf_for(client)
    resp = await client.post("/console/policies/preview", data={**POLICY, "csrf": csrf})
    text = await resp.text()
    assert resp.status == 200 and "Nothing is published or sent yet" in text
    assert "Everyone with a deliverable email address" in text
    assert "Clearer retention" in text and "Zwei" not in text  # the summary, quoted as given
    with orm:
        assert await AuditEntry.all().count() == 1  # only the sign-in: a preview saves nothing
    resp = await client.post("/console/policies", data={**POLICY, "csrf": csrf},
                             allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/console/policies/2026-12"
    resp = await client.post("/console/campaigns", data={
        "csrf": csrf, "name": "December notice", "kind": "policy_notice",
        "policy_version": "2026-12", "channels": "email"}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/console/campaigns/1"
    page = await (await client.get("/console/campaigns/1")).text()
    assert "Step 2: audience preview" in page and 'data-testid="eligible">1<' in page
    resp = await client.post("/console/campaigns/1/test", data={
        "csrf": csrf, "addresses": "team@example.org", "locale": "de"}, allow_redirects=False)
    assert resp.status == 303
    assert "Test sent to team@example.org" in await (await client.get(
        resp.headers["Location"])).text()
    for action in ("send", "cancel"):
        resp = await client.post(f"/console/campaigns/1/{action}", data={"csrf": csrf},
                                 allow_redirects=False)
        assert resp.status == 303, await resp.text()
    resp = await client.post("/console/users/alice/withdraw", data={
        "csrf": csrf, "topic": "email_notifications", "note": "asked by phone, ticket 7"},
        allow_redirects=False)
    assert resp.status == 303
    assert "Withdrawn: 1 topic(s) changed" in await (await client.get(
        resp.headers["Location"])).text()
    resp = await client.post("/console/suppressions", data={
        "csrf": csrf, "address": "+4915123456789", "note": "asked by letter"},
        allow_redirects=False)
    assert resp.status == 303
    with orm:
        entries = await AuditEntry.all().order_by("id")
        assert [e.action for e in entries] == [
            "console.sign_in", "policy.publish", "campaign.create", "campaign.test",
            "campaign.send", "campaign.cancel", "consent.withdraw", "suppression.add"]
        assert {e.key_id for e in entries} == {admin_kid(settings)}
        assert (await Campaign.get(id=1)).status in ("cancelled", "done")
    events = (await (await client.get("/v1/users/alice/consent-events",
                                      headers=ADMIN)).json())["events"]
    assert (events[0]["source"], events[0]["actor"], events[0]["note"], events[0]["to_state"]) \
        == ("support", admin_kid(settings), "asked by phone, ticket 7", "unsubscribed")
    page = await (await client.get("/console/audit")).text()
    assert "consent.withdraw" in page and "suppression.add" in page


@pytest.mark.parametrize(("path", "data", "status", "words"), [
    ("/console/policies/preview", {**POLICY, "url": "not a url"}, 422, "valid URL"),
    ("/console/policies/preview", {**POLICY, "effective_at": "soon"}, 422, "datetime"),
    ("/console/policies/preview", {**POLICY, "material": ""}, 422, "boolean"),
    ("/console/policies", {**POLICY, "version": "2026-11"}, 409, "published already"),
    ("/console/campaigns", {"name": "x", "kind": "newsletter"}, 422, "needs a topic"),
    ("/console/campaigns", {"name": "x", "kind": "notification",
                            "topic": "email_notifications", "variables": "subject"}, 422,
     "write NAME=VALUE"),
    ("/console/campaigns", {"name": "", "kind": "bogus"}, 422, "Input should be"),
    ("/console/campaigns/1/test", {"addresses": "not-an-address"}, 422, "not a valid email"),
    ("/console/campaigns/1/test", {"addresses": ""}, 422, "at least 1 item"),
    ("/console/campaigns/1/resume", {}, 409, "only a paused campaign"),
    ("/console/users/alice/withdraw", {"topic": "all", "note": ""}, 422, "at least 1"),
    ("/console/users/alice/withdraw", {"topic": "bogus", "note": "x"}, 422, "unknown topic"),
    ("/console/users/nobody/withdraw", {"topic": "all", "note": "x"}, 404, "no user"),
    ("/console/suppressions", {"address": "x@example.com", "note": ""}, 422, "at least 1"),
])
async def test_bad_form_input_gets_a_clear_message_and_changes_nothing(
        client, orm, alice, path, data, status, words):
    await seed(client, alice)
    await client.post("/v1/policies", json={**POLICY, "version": "2026-11", "effective_at":
                      "2026-11-01T00:00:00Z", "material": False}, headers=ADMIN)
    await sign_in(client)
    before = await snapshot(orm)
    resp = await client.post(path, data={**data, "csrf": await csrf_for(client)},
                             allow_redirects=False)
    text = await resp.text()
    assert resp.status == status, text
    assert words in text
    assert "Nothing was" in text or "nothing was" in text or "has errors" in text
    assert await snapshot(orm) == before


async def test_wrong_keys_at_sign_in_count_against_the_api_limit(aiohttp_client, database_url,
                                                                 tmp_path):
    from support import environ_for

    from notify.settings import load_settings
    from notify.web.app import make_app

    settings = load_settings(environ=environ_for(
        database_url, tmp_path / "data", NOTIFY_AUTH_FAILURE_RATE_LIMIT="2/minute"))
    client = await aiohttp_client(make_app(settings))
    assert (await sign_in(client, "wrong-key-0000000000")).status == 401
    assert (await sign_in(client, "wrong-key-0000000000")).status == 401
    refused = await sign_in(client)  # even the right key waits now, as on the API
    assert refused.status == 429 and "Too many wrong keys" in await refused.text()
    assert int(refused.headers["Retry-After"]) > 0
    assert (await client.get("/v1/users/alice", headers=ADMIN)).status == 429
