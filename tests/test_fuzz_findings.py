"""What the fuzzers found (issue #8), each kept as a plain regression test."""

from __future__ import annotations

import gzip
import json
from urllib.parse import urlencode, urlsplit

import brotli
from support import ADMIN, APP, environ_for, snapshot
from twilio.request_validator import RequestValidator

from notify.settings import load_settings
from notify.web.app import make_app
from notify.web.endpoints import DB

try:  # Python 3.14 has it in the standard library; before, the backport aiohttp uses.
    from compression import zstd
except ImportError:
    from backports import zstd

JSON = "application/json"


async def test_openapi_documents_the_201_and_409_the_views_answer(client):
    """schemathesis: PUT answered an undocumented 201, and several POSTs a 409."""
    spec = await (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    created = paths["/v1/users/{id}"]["put"]["responses"]
    assert created["201"]["content"] == created["200"]["content"]
    assert "409" in created and "409" in paths["/v1/users/{id}"]["patch"]["responses"]
    assert "409" in paths["/v1/policies"]["post"]["responses"]
    for action in ("send", "pause", "resume", "cancel"):
        assert "409" in paths[f"/v1/campaigns/{{id}}/{action}"]["post"]["responses"], action
    # A campaign's id was described as a user's id (letters and all): it is a number.
    [campaign_id] = paths["/v1/campaigns/{id}"]["get"]["parameters"]
    assert campaign_id["schema"]["pattern"] == "^[0-9]{1,18}$"
    # ... and those are the statuses they really answer.
    assert (await client.put("/v1/users/zoe", json={}, headers=APP)).status == 201
    policy = {"version": "v1", "title": "T", "summary": "S", "url": "https://example.com/p",
              "effective_at": "2026-01-01T00:00:00Z", "material": False}
    assert (await client.post("/v1/policies", json=policy, headers=ADMIN)).status == 201
    assert (await client.post("/v1/policies", json=policy, headers=ADMIN)).status == 409
    campaign = await (await client.post("/v1/campaigns", headers=ADMIN, json={
        "name": "n", "kind": "policy_notice", "policy_version": "v1"})).json()
    assert (await client.post(f"/v1/campaigns/{campaign['id']}/resume",
                              headers=ADMIN)).status == 409


async def test_a_body_that_is_not_what_its_content_encoding_says_is_a_400(client, orm, alice):
    """hypothesis: gzip that is not gzip answered 500 from the API, the pages and hooks."""
    before = await snapshot(orm)
    resp = await client.put("/v1/users/alice", data=b'{"name": "x"}', headers={
        **APP, "Content-Type": JSON, "Content-Encoding": "gzip"})
    assert resp.status == 400 and resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert "could not be read" in problem["detail"] and problem["errors"][0]["field"] == "body"
    links = await (await client.get("/v1/users/alice/links", headers=APP)).json()
    one_click = urlsplit(links["unsubscribe"]["email_notifications"]).path
    for path in (one_click, "/preferences"):
        resp = await client.post(path, data=b"List-Unsubscribe=One-Click", headers={
            "Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"})
        assert resp.status in (404, 422), path  # "not valid" / "enter an address" pages
    assert await snapshot(orm) == before


async def test_brotli_and_zstd_bodies_are_read(client, orm):
    """hypothesis: Content-Encoding br was refused by aiohttp itself as plain text."""
    body = json.dumps({"name": "Zoë"}).encode()
    for encoding, packed in (("br", brotli.compress(body)), ("zstd", zstd.compress(body)),
                             ("gzip", gzip.compress(body))):
        resp = await client.put(f"/v1/users/u-{encoding}", data=packed, headers={
            **APP, "Content-Type": JSON, "Content-Encoding": encoding})
        assert resp.status == 201, (encoding, await resp.text())
        assert (await resp.json())["name"] == "Zoë"
    resp = await client.put("/v1/users/u-bad", data=b"not brotli", headers={
        **APP, "Content-Type": JSON, "Content-Encoding": "br"})
    assert resp.status == 400 and resp.content_type == "application/problem+json"


async def test_a_multipart_part_with_a_control_character_in_its_header_is_not_a_500(
        client, orm, alice):
    """hypothesis: aiohttp's InvalidHeader from a multipart part escaped as a 500."""
    links = await (await client.get("/v1/users/alice/links", headers=APP)).json()
    body = (b'--b0undary\r\nContent-Disposition: form-data; name="\x1f"\r\n\r\n'
            b"unsubscribe\r\n--b0undary--\r\n")
    headers = {"Content-Type": "multipart/form-data; boundary=b0undary"}
    before = await snapshot(orm)
    for path in (urlsplit(links["preferences"]).path, "/preferences",
                 urlsplit(links["unsubscribe"]["*"]).path):
        resp = await client.post(path, data=body, headers=headers, allow_redirects=False)
        assert resp.status in (404, 422), (path, resp.status)
    assert await snapshot(orm) == before


async def test_a_signed_twilio_request_with_a_repeated_field_is_refused(
        aiohttp_client, database_url, tmp_path):
    """hypothesis: Twilio's signature hashes a repeated field's values sorted, so a signed
    "Body=HELP&Body=STOP" also verified as "Body=STOP&Body=HELP", and we read the first."""
    token, public = "regress-twilio-token-0123456789ab", "https://notify.example.com"
    settings = load_settings(environ=environ_for(
        database_url, tmp_path / "data", NOTIFY_PUBLIC_URL=public,
        NOTIFY_TWILIO_AUTH_TOKEN=token, NOTIFY_TWILIO_FROM="+15005550006"))
    client = await aiohttp_client(make_app(settings))
    assert (await client.put("/v1/users/ada", headers=APP, json={
        "phone": "+4915123456789", "phone_verified": True})).status == 201
    assert (await client.put("/v1/users/ada/consents/sms_notifications", headers=APP,
                             json={"subscribed": True})).status == 200
    path = "/webhooks/twilio/sms"
    signed = [("MessageSid", "SM" + "0f" * 16), ("From", "+4915123456789"),
              ("Body", "HELP"), ("Body", "STOP")]
    validator = RequestValidator(token)
    signature = validator.compute_signature(public + path, _multi(signed))
    swapped = [*signed[:2], ("Body", "STOP"), ("Body", "HELP")]
    assert validator.validate(public + path, _multi(swapped), signature)  # Twilio's scheme
    before = await snapshot(client.app[DB])
    resp = await client.post(path, data=urlencode(swapped), headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature})
    assert resp.status == 400 and "more than once" in (await resp.json())["detail"]
    assert await snapshot(client.app[DB]) == before


def _multi(pairs):  # noqa: ANN001, ANN202
    from multidict import MultiDict

    return MultiDict(pairs)
