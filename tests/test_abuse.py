"""Abuse limits (issue #8, point 4): per-IP rate limits with their defaults, refused keys
and tokens, the client address behind a trusted proxy, body size, framing, redirects."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import ADMIN, APP, environ_for, snapshot
from test_pages import ONE_CLICK, links, path, states, subscribe

from notify.models import ConsentEvent
from notify.settings import ConfigError, load_settings
from notify.web.app import make_app
from notify.web.endpoints import DB

DEFAULTS = {"NOTIFY_PUBLIC_RATE_LIMIT": "100/second", "NOTIFY_BAD_TOKEN_RATE_LIMIT": "60/minute",
            "NOTIFY_AUTH_FAILURE_RATE_LIMIT": "30/minute", "NOTIFY_TRUSTED_PROXIES": "127.0.0.1"}


def client_at(ip: str) -> dict[str, str]:
    """Headers of a request that the trusted proxy (the test client's 127.0.0.1) forwards
    for ``ip``."""
    return {"X-Forwarded-For": f"198.51.100.99, {ip}"}


@pytest.fixture
async def limited(aiohttp_client, database_url: str, tmp_path: Path):  # noqa: ANN201
    """A client of an app with the production limits, and a user alice."""
    def make(**extra: str):  # noqa: ANN202
        return load_settings(environ=environ_for(database_url, tmp_path / "data",
                                                 **{**DEFAULTS, **extra}))

    async def start(**extra: str):  # noqa: ANN202
        client = await aiohttp_client(make_app(make(**extra)))
        resp = await client.put("/v1/users/alice", json={
            "email": "alice@example.com", "email_verified": True}, headers=APP)
        assert resp.status == 201
        return client

    return start


async def test_bad_tokens_lock_out_their_address_only_and_change_nothing(limited):
    client = await limited()
    await subscribe(client, "email_notifications")
    good = path((await links(client))["unsubscribe"]["email_notifications"])
    orm = client.app[DB]
    before = await snapshot(orm)
    attacker = client_at("203.0.113.7")
    for n in range(60):
        resp = await client.post(f"/u/k1.forged{n}.{'A' * 43}", data=ONE_CLICK, headers=attacker)
        assert resp.status == 404, n
    refused = await client.post(f"/u/k1.forged.{'B' * 43}", data=ONE_CLICK, headers=attacker)
    assert refused.status == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "Too many requests" in await refused.text()
    # Locked out for the window, valid token or not: a guess that hits says nothing.
    assert (await client.post(good, data=ONE_CLICK, headers=attacker)).status == 429
    assert await snapshot(orm) == before
    # Everyone else is unaffected.
    assert (await client.post(good, data=ONE_CLICK, headers=client_at("192.0.2.1"))).status == 200
    assert (await states(client))["email_notifications"] == "unsubscribed"


async def test_a_mail_providers_burst_of_one_click_posts_passes_the_default_limits(limited):
    """RFC 8058 POSTs come from the provider's servers: 100 at once from one address pass."""
    client = await limited()
    await subscribe(client, "newsletter")
    good = path((await links(client))["unsubscribe"]["newsletter"])
    provider = client_at("209.85.220.41")
    answers = [(await client.post(good, data=ONE_CLICK, headers=provider)).status
               for _ in range(100)]
    assert answers == [200] * 100


async def test_public_pages_limit_per_address_with_retry_after(limited):
    client = await limited(NOTIFY_PUBLIC_RATE_LIMIT="5/minute")
    crowd = client_at("203.0.113.8")
    assert [(await client.get("/policy", headers=crowd)).status for _ in range(5)] == [200] * 5
    refused = await client.get("/preferences", headers=crowd)
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["Content-Type"].startswith("text/html")
    assert (await client.get("/policy", headers=client_at("203.0.113.9"))).status == 200
    # The API is not a public page: the main app's calls are not counted.
    assert (await client.get("/v1/users/alice", headers={**APP, **crowd})).status == 200


async def test_wrong_api_keys_lock_out_their_address_as_problem_json(limited):
    client = await limited()
    guesser = client_at("203.0.113.10")
    for n in range(30):
        resp = await client.get("/v1/users/alice", headers={
            "Authorization": f"Bearer guess-{n:04d}-0123456789", **guesser})
        assert resp.status == 401
    refused = await client.get("/v1/users/alice", headers={**APP, **guesser})
    assert refused.status == 429
    assert refused.content_type == "application/problem+json"
    assert int(refused.headers["Retry-After"]) >= 1
    assert (await refused.json())["status"] == 429
    assert (await client.get("/v1/users/alice",
                             headers={**APP, **client_at("192.0.2.2")})).status == 200


@pytest.mark.parametrize(("proxies", "recorded"), [("127.0.0.1", "192.0.2.44"),
                                                    ("", "127.0.0.1")])
async def test_the_ledger_records_the_client_behind_a_trusted_proxy_only(limited, proxies,
                                                                        recorded):
    client = await limited(NOTIFY_TRUSTED_PROXIES=proxies)
    await subscribe(client, "newsletter")
    url = path((await links(client))["unsubscribe"]["newsletter"])
    assert (await client.post(url, data=ONE_CLICK, headers=client_at("192.0.2.44"))).status == 200
    with client.app[DB]:
        [ip] = await ConsentEvent.filter(source="one_click").values_list("ip", flat=True)
    assert ip == recorded


async def test_oversized_bodies_are_refused_on_pages_and_api_without_change(limited):
    client = await limited()
    good = path((await links(client))["preferences"])
    before = await snapshot(client.app[DB])
    big = "x" * 70_000
    page = await client.post(good, data={"action": "save", "note": big})
    assert page.status == 413
    api = await client.put("/v1/users/alice", data=big, headers={
        **APP, "Content-Type": "application/json"})
    assert api.status == 413 and api.content_type == "application/problem+json"
    assert await snapshot(client.app[DB]) == before


async def test_pages_cannot_be_framed_and_redirect_only_to_themselves(limited):
    client = await limited()
    await subscribe(client, "newsletter")
    url = path((await links(client))["preferences"])
    for target in ("/policy", "/preferences", url, "/v1/users/alice"):
        resp = await client.get(target, headers=APP)
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    saved = await client.post(url, data={"action": "save"}, allow_redirects=False,
                              headers={"Host": "evil.example"})
    assert saved.status == 303
    assert saved.headers["Location"].startswith(url + "?saved=")


@pytest.mark.parametrize(("key", "value"), [
    ("NOTIFY_PUBLIC_RATE_LIMIT", "lots"), ("NOTIFY_BAD_TOKEN_RATE_LIMIT", "5 per fortnight"),
    ("NOTIFY_TRUSTED_PROXIES", "10.0.0.1,proxy.local")])
def test_bad_limit_settings_name_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        load_settings(environ=environ_for("sqlite://x.db", tmp_path, **{key: value}))


async def test_admin_calls_count_refusals_too(limited):
    client = await limited(NOTIFY_AUTH_FAILURE_RATE_LIMIT="2/minute")
    app_key_on_admin_route = [(await client.delete("/v1/users/alice", headers=APP)).status
                              for _ in range(3)]
    # A valid key without the scope is a 403, not a guess: it does not count.
    assert app_key_on_admin_route == [403, 403, 403]
    assert (await client.delete("/v1/users/alice", headers=ADMIN)).status == 204


def test_keys_new_prints_a_key_whose_digest_entry_authenticates(tmp_path):
    import asyncio

    from test_cli import run

    made = run(["keys", "new", "admin"], environ_for(f"sqlite://{tmp_path}/n.db", tmp_path))
    assert made.code == 0, made.err
    key = made.out.split("key:", 1)[1].split()[0]
    entry = made.out.split("config:", 1)[1].split()[0]
    assert entry.startswith("admin:sha256:") and key not in entry

    async def call() -> tuple[int, int]:
        from aiohttp.test_utils import TestClient, TestServer

        settings = load_settings(environ=environ_for(
            f"sqlite://{tmp_path}/n.db", tmp_path / "data", NOTIFY_API_KEYS=entry))
        async with TestClient(TestServer(make_app(settings))) as client:
            good = await client.get("/v1/policies", headers={"Authorization": f"Bearer {key}"})
            wrong = await client.get("/v1/policies",
                                     headers={"Authorization": f"Bearer {key[:-1]}x"})
            return good.status, wrong.status

    assert asyncio.run(call()) == (200, 401)
