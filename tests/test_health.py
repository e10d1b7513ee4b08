"""Liveness, readiness, and what callers see while the database is away."""

from __future__ import annotations

from support import APP, environ_for, free_port

from notify.settings import load_settings
from notify.web.app import make_app


async def test_healthz_and_readyz(client):
    for path in ("/healthz", "/readyz"):
        resp = await client.get(path)
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def test_database_away_answers_503_with_retry_after(aiohttp_client, tmp_path):
    # A PostgreSQL URL on a port where nothing listens: the app starts (connections are
    # lazy) and every request that needs the database finds it away.
    url = f"postgres://postgres@127.0.0.1:{free_port()}/nothing"
    settings = load_settings(environ=environ_for(url, tmp_path))
    client = await aiohttp_client(make_app(settings, migrate=False))
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert ready.headers["Retry-After"]
    resp = await client.get("/v1/users/alice", headers=APP)
    assert resp.status == 503
    assert resp.content_type == "application/problem+json"
    assert resp.headers["Retry-After"]
    assert "Traceback" not in await resp.text()
