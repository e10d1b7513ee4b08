"""Hypothesis against the webhooks: the bounce webhook with any JSON, key, media type and
encoding; Twilio's webhooks unsigned, with a wrong or someone else's signature, or signed.

Never a 5xx or a traceback; every refusal is an RFC 9457 problem and changes nothing
(compared row by row); nothing without Twilio's valid signature changes anything.
"""

from __future__ import annotations

import json
from collections import Counter
from urllib.parse import urlencode

import pytest
from fuzz_site import (
    FORM,
    PHONE,
    PUBLIC,
    TWILIO_TOKEN,
    bodies,
    latin1_header,
    make_site,
    request,
    resubscribe,
    texts,
)
from fuzzing import Bridge, assert_sane, budget
from hypothesis import example, given
from hypothesis import strategies as st
from multidict import MultiDict
from support import ADMIN, APP, snapshot
from twilio.request_validator import RequestValidator

from notify.web.endpoints import DB


@pytest.fixture
async def site(aiohttp_client, database_url, tmp_path):  # noqa: ANN001, ANN201
    return await make_site(aiohttp_client, database_url, tmp_path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8)
bounce_bodies = st.one_of(
    st.fixed_dictionaries({  # as a relay's integration sends them
        "type": st.just("bounce"), "email": st.sampled_from(["alice@example.com",
                                                             "nobody@example.com"]),
        "permanent": st.booleans(), "detail": texts}),
    st.fixed_dictionaries({"type": st.just("complaint"), "email": st.just("alice@example.com")}),
    st.fixed_dictionaries({"type": st.sampled_from(["bounce", "complaint", "other"])}, optional={
        "email": st.one_of(st.just("alice@example.com"), st.just("nobody@example.com"),
                           texts),
        "permanent": st.one_of(st.booleans(), json_values),
        "detail": texts, "message_id": texts, "extra": json_values}),
    json_values)
#: The admin key first and twice: hypothesis draws early entries more often, and only the
#: admin key gets past authentication to the body.
AUTHS = [ADMIN, ADMIN, APP, None, {"Authorization": "Bearer not-a-key-0123456789"},
         {"Authorization": "Basic YWRtaW46YWRtaW4="}, {"Authorization": "Bearer "}]


async def test_bounce_webhook_refuses_cleanly_and_changes_nothing_when_refused(
        site, database_url):
    client, settings, _ = site
    orm = client.app[DB]
    seen: Counter[int] = Counter()

    def work(bridge: Bridge) -> None:
        @budget(database_url, sqlite=70, postgres=20)
        # Explicit examples first (always run, whatever the seed): a relay's hard bounce,
        # and the same body refused for the app key, for an unknown field, as a form.
        @example(payload={"type": "bounce", "email": "alice@example.com", "permanent": True},
                 auth=ADMIN, raw=False, req=({}, b"", b""))
        @example(payload={"type": "bounce"}, auth=APP, raw=False, req=({}, b"", b""))
        @example(payload={"type": "complaint", "email": "nobody@example.com", "x": 1},
                 auth=ADMIN, raw=False, req=({}, b"", b""))
        @example(payload=None, auth=ADMIN, raw=True,
                 req=({"Content-Type": FORM}, b"type=bounce", b"type=bounce"))
        @given(payload=bounce_bodies, auth=st.sampled_from(AUTHS), raw=st.booleans(),
               req=bodies())
        def one(payload: object, auth: dict | None, raw: bool,
                req: tuple[dict, bytes, bytes]) -> None:
            headers, sent, _ = req
            if not raw:  # a JSON body as the API expects it, or the fuzzed body as is
                headers, sent = {"Content-Type": "application/json"}, json.dumps(
                    payload).encode()
            before = bridge.run(snapshot(orm))
            status, media, body = bridge.run(request(
                client, "POST", "/webhooks/bounces", data=sent,
                headers={**headers, **(auth or {})}))
            assert_sane(status, body, (headers, sent))
            seen[status] += 1
            if status >= 400:
                assert media == "application/problem+json", (status, media, body)
                problem = json.loads(body)
                assert problem["status"] == status and problem["title"]
                assert bridge.run(snapshot(orm)) == before, (status, sent)
            if auth is not ADMIN:
                assert status in (401, 403), (status, auth)

        one()

    await Bridge.off_loop(work)
    assert seen[202] and seen[401] and seen[403] and seen[422] and seen[415], seen


SID = "SM" + "0f" * 16
twilio_fields = st.one_of(
    st.lists(st.tuples(st.one_of(st.sampled_from(["MessageSid", "Body", "From", "To", "OptOutType",
                               "MessageStatus", "ErrorCode", "AccountSid"]), texts),
    st.one_of(st.sampled_from(["STOP", "START", "HELP", "stop please", PHONE,
                               SID, "delivered", "failed", "21610", "STOP"]),
              texts)), max_size=8),
    # As Twilio sends them: an inbound message, or a status callback.
    st.tuples(st.just(("MessageSid", SID)), st.tuples(st.just("From"), st.sampled_from(
        [PHONE, "+15005550009", "not a number"])), st.tuples(st.just("Body"), st.one_of(
            st.sampled_from(["STOP", "START", "HELP", "stop please"]), texts))).map(list),
    st.tuples(st.just(("MessageSid", SID)), st.tuples(st.just("MessageStatus"), st.sampled_from(
        ["delivered", "failed", "undelivered", "weird"])), st.tuples(st.just("ErrorCode"),
        st.sampled_from(["", "21610", "30003", "x"]))).map(list))
SIGNATURES = ["right", "none", "empty", "random", "other-token", "other-url", "other-body"]


def _twilio_signature(kind: str, url: str, pairs: list[tuple[str, str]], junk: str) -> str:
    params = MultiDict(pairs)
    if kind == "right":
        return RequestValidator(TWILIO_TOKEN).compute_signature(url, params)
    if kind == "other-token":
        return RequestValidator("not-our-token").compute_signature(url, params)
    if kind == "other-url":
        return RequestValidator(TWILIO_TOKEN).compute_signature(url + "?x=1", params)
    if kind == "other-body":
        return RequestValidator(TWILIO_TOKEN).compute_signature(
            url, MultiDict([*pairs, ("NotSent", "x")]))
    return junk if kind == "random" else ""


async def test_twilio_hooks_unsigned_or_forged_change_nothing(site, database_url):
    client, settings, _ = site
    orm = client.app[DB]
    seen: Counter[str] = Counter()

    def work(bridge: Bridge) -> None:
        @budget(database_url, sqlite=70, postgres=20)
        # Explicit examples first (always run, whatever the seed): a STOP as Twilio sends
        # it, and the same with a signature made with another token.
        @example(path="/webhooks/twilio/sms", signature="right", junk="", charset="",
                 pairs=[("MessageSid", SID), ("From", PHONE), ("Body", "STOP")])
        @example(path="/webhooks/twilio/sms", signature="other-token", junk="", charset="",
                 pairs=[("MessageSid", SID), ("From", PHONE), ("Body", "STOP")])
        @given(path=st.sampled_from(["/webhooks/twilio/sms", "/webhooks/twilio/status"]),
               pairs=twilio_fields, signature=st.sampled_from(SIGNATURES), junk=latin1_header,
               charset=st.sampled_from(["", "; charset=utf-8", "; charset=latin-1"]))
        def one(path: str, pairs: list[tuple[str, str]], signature: str, junk: str,
                charset: str) -> None:
            sent = urlencode(pairs).encode()
            headers = {"Content-Type": FORM + charset}
            if signature != "none":
                headers["X-Twilio-Signature"] = _twilio_signature(signature, PUBLIC + path,
                                                                  pairs, junk)
            before = bridge.run(snapshot(orm))
            status, media, body = bridge.run(request(client, "POST", path, data=sent,
                                                      headers=headers))
            assert_sane(status, body, (path, pairs, signature))
            seen["accepted" if signature == "right" and status < 400 else "refused"] += 1
            if signature != "right" or status >= 400:
                assert status >= 400 and media == "application/problem+json", (status, media)
                assert bridge.run(snapshot(orm)) == before, (path, pairs, signature)
            bridge.run(resubscribe(client))

        one()

    await Bridge.off_loop(work)
    assert seen["accepted"] and seen["refused"], seen
