"""Bad input of every kind gets a clear 4xx problem and leaves the database as it was."""

from __future__ import annotations

import json

import pytest
from support import ADMIN, APP, snapshot

JSON = {"Content-Type": "application/json"}

CASES = [
    # (name, method, path, headers, raw body, status, field at fault)
    ("malformed json", "PUT", "/v1/users/alice", {**APP, **JSON}, b'{"email": ', 400, "body"),
    ("not utf-8", "PUT", "/v1/users/alice", {**APP, **JSON}, b'{"name": "\xff"}', 400, "body"),
    ("json array", "PUT", "/v1/users/alice", {**APP, **JSON}, b"[1, 2]", 422, "body"),
    ("wrong type", "PUT", "/v1/users/alice", {**APP, **JSON},
     b'{"email_verified": "maybe"}', 422, "body.email_verified"),
    ("wrong type consent", "PUT", "/v1/users/alice/consents/newsletter", {**APP, **JSON},
     b'{"subscribed": "yes please"}', 422, "body.subscribed"),
    ("missing field", "PUT", "/v1/users/alice/consents/newsletter", {**APP, **JSON},
     b"{}", 422, "body.subscribed"),
    ("unknown field", "PUT", "/v1/users/alice", {**APP, **JSON},
     b'{"emial": "a@example.com"}', 422, "body.emial"),
    ("invalid email", "PUT", "/v1/users/alice", {**APP, **JSON},
     b'{"email": "alice@@example"}', 422, "body.email"),
    ("email with newline", "PUT", "/v1/users/alice", {**APP, **JSON},
     json.dumps({"email": "a@example.com\r\nBcc: x@example.com"}).encode(), 422, "body.email"),
    ("national phone", "PUT", "/v1/users/alice", {**APP, **JSON},
     b'{"phone": "0151 23456789"}', 422, "body.phone"),
    ("invalid phone", "PUT", "/v1/users/alice", {**APP, **JSON},
     b'{"phone": "+49 1"}', 422, "body.phone"),
    ("bad locale", "PUT", "/v1/users/alice", {**APP, **JSON},
     b'{"locale": "english please"}', 422, "body.locale"),
    ("bad time zone", "PUT", "/v1/users/alice", {**APP, **JSON},
     b'{"time_zone": "Mars/Olympus"}', 422, "body.time_zone"),
    ("bad ip", "PUT", "/v1/users/alice/consents/newsletter", {**APP, **JSON},
     b'{"subscribed": false, "ip": "999.1.1.1"}', 422, "body.ip"),
    ("unknown source", "PUT", "/v1/users/alice/consents/newsletter", {**APP, **JSON},
     b'{"subscribed": false, "source": "telepathy"}', 422, "body.source"),
    ("unknown topic", "PUT", "/v1/users/alice/consents/pigeon", {**APP, **JSON},
     b'{"subscribed": true}', 404, "path.topic"),
    ("bad user id", "PUT", "/v1/users/al%20ice", {**APP, **JSON}, b"{}", 422, "path.id"),
    ("erased user id", "PUT", "/v1/users/erased:" + "0" * 64, {**APP, **JSON}, b"{}", 422,
     "path.id"),
    ("form body", "PUT", "/v1/users/alice",
     {**APP, "Content-Type": "application/x-www-form-urlencoded"}, b"email=a", 415,
     "header.Content-Type"),
    ("no content type", "PUT", "/v1/users/alice", APP, b'{"name": "x"}', 415,
     "header.Content-Type"),
    ("oversized body", "PUT", "/v1/users/alice", {**APP, **JSON},
     json.dumps({"name": "x" * 70_000}).encode(), 413, None),
    ("no key", "PUT", "/v1/users/alice", JSON, b'{"name": "x"}', 401, None),
    ("wrong key", "PUT", "/v1/users/alice", {"Authorization": "Bearer nope-nope-nope", **JSON},
     b'{"name": "x"}', 401, None),
    ("basic auth", "PUT", "/v1/users/alice", {"Authorization": "Basic YTpi", **JSON},
     b'{"name": "x"}', 401, None),
    ("wrong scope", "DELETE", "/v1/users/alice", APP, b"", 403, None),
    ("wrong scope for source", "PUT", "/v1/users/alice/consents/newsletter", {**APP, **JSON},
     b'{"subscribed": false, "source": "import"}', 403, "body.source"),
    ("name with a newline", "PUT", "/v1/users/alice", {**APP, **JSON},
     b'{"name": "Ada\\r\\nBcc: x@example.com"}', 422, "body.name"),
    ("NUL in a note", "PUT", "/v1/users/alice/consents/newsletter", {**APP, **JSON},
     b'{"subscribed": false, "note": "a\\u0000b"}', 422, "body.note"),
    ("non-ASCII local part", "PUT", "/v1/users/alice", {**APP, **JSON},
     '{"email": "jos\u00e9@example.com"}'.encode(), 422, "body.email"),
    ("user id with a newline", "PUT", "/v1/users/bob%0A", {**APP, **JSON}, b"{}", 422,
     "path.id"),
    ("cursor too large", "GET", "/v1/users/alice/consent-events?before=9223372036854775808",
     APP, b"", 422, "query.before"),
    ("non-ASCII bearer", "GET", "/v1/users/alice",
     {"Authorization": "Bearer k\u00e9y-0123456789abc"}, b"", 401, None),
    ("bad page size", "GET", "/v1/users/alice/consent-events?limit=0", APP, b"", 422,
     "query.limit"),
    ("bad cursor", "GET", "/v1/users/alice/consent-events?before=abc", APP, b"", 422,
     "query.before"),
    ("unknown query", "GET", "/v1/users/alice/consent-events?sort=asc", APP, b"", 422,
     "query.sort"),
    ("wrong method", "POST", "/v1/users/alice", {**APP, **JSON}, b"{}", 405, None),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
async def test_bad_input_is_refused_and_changes_nothing(
    client, orm, alice, method, path, headers, body, status, field
):
    await client.put("/v1/users/alice/consents/newsletter", json={"subscribed": False},
                     headers=APP)
    before = await snapshot(orm)
    resp = await client.request(method, path, data=body, headers=headers)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["status"] == status
    assert problem["title"] and problem["detail"]
    assert "Traceback" not in problem["detail"]
    if field:
        assert field in [e["field"] for e in problem["errors"]], problem
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert await snapshot(orm) == before


async def test_unknown_route_is_a_problem_404(client):
    resp = await client.get("/v2/whatever", headers=ADMIN)
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
