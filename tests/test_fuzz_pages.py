"""Hypothesis against the public pages and the webhooks: tokens, form bodies, headers,
charsets and content encodings.

Whatever arrives: never a 5xx, never a traceback, and a request that is refused (any 4xx,
any token that is not exactly a valid one, any Twilio request without the right
signature) leaves every table as it was, compared row by row.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections import Counter
from urllib.parse import quote, urlencode, urlsplit

import brotli
import pytest
from fuzzing import Bridge, assert_sane, backend, budget, tokens_near
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict
from support import ADMIN, APP, environ_for, snapshot
from twilio.request_validator import RequestValidator

from notify.models import User
from notify.settings import load_settings
from notify.tokens import Link, Purpose, sign
from notify.web.app import make_app
from notify.web.endpoints import DB

TWILIO_TOKEN = "fuzz-twilio-token-0123456789abcdef"
PUBLIC = "https://notify.example.com"
PHONE = "+4915123456789"
TOPICS = ("email_notifications", "sms_notifications", "newsletter")
FORM = "application/x-www-form-urlencoded"
PAGE_ACTIONS = ("unsubscribe", "undo", "save", "unsubscribe_all", "confirm")


@pytest.fixture
async def site(aiohttp_client, database_url, tmp_path):
    """The app with Twilio's token set, and Alice subscribed to every topic."""
    settings = load_settings(environ=environ_for(
        database_url, tmp_path / "data", NOTIFY_PUBLIC_URL=PUBLIC,
        NOTIFY_TWILIO_AUTH_TOKEN=TWILIO_TOKEN, NOTIFY_TWILIO_FROM="+15005550006"))
    client = await aiohttp_client(make_app(settings))
    resp = await client.put("/v1/users/alice", headers=APP, json={
        "email": "alice@example.com", "email_verified": True, "phone": PHONE,
        "phone_verified": True, "locale": "de"})
    assert resp.status == 201
    await resubscribe(client)
    links = await (await client.get("/v1/users/alice/links", headers=APP)).json()
    with client.app[DB]:
        handle = (await User.get(external_id="alice")).handle
    tokens = [urlsplit(u).path.rsplit("/", 1)[1]
              for u in (links["preferences"], *links["unsubscribe"].values())]
    tokens.append(sign(Link(handle, Purpose.CONFIRM, "newsletter"), settings.secret_keys))
    return client, settings, tokens


async def resubscribe(client) -> None:  # noqa: ANN001
    # An admin import subscribes directly, also to the double opt-in newsletter; it is a
    # no-op (no ledger event) for a topic already subscribed.
    for topic in TOPICS:
        resp = await client.put(f"/v1/users/alice/consents/{topic}", headers=ADMIN, json={
            "subscribed": True, "source": "import", "note": "fuzz fixture"})
        assert resp.status == 200, await resp.text()


# -- strategies --------------------------------------------------------------------------

texts = st.text(max_size=40)
latin1_header = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                      exclude_characters="\x7f"), max_size=60)
form_pairs = st.lists(st.tuples(
    st.one_of(st.sampled_from(["action", "topic", "List-Unsubscribe", "email"]), texts),
    st.one_of(st.sampled_from([*PAGE_ACTIONS, "One-Click", *TOPICS, "alice@example.com"]),
              texts)), max_size=5)
CONTENT_TYPES = [None, FORM, f"{FORM}; charset=utf-8", f"{FORM}; charset=latin-1",
                 f"{FORM}; charset=bogus", "multipart/form-data",
                 "multipart/form-data; boundary=b0undary", "application/json", "text/plain",
                 "application/x-www-form-urlencoded;;;", ""]
ENCODINGS = [None, "identity", "gzip", "deflate", "br", "gzip-garbage", "br-garbage", "compress",
             "bogus"]


def _multipart(pairs: list[tuple[str, str]]) -> bytes:
    parts = [f'--b0undary\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             for k, v in pairs]
    return ("".join(parts) + "--b0undary--\r\n").encode("utf-8", "surrogatepass")


well_formed = st.sampled_from([[("List-Unsubscribe", "One-Click")]] + [
    [("action", a)] for a in PAGE_ACTIONS] + [[("action", "save"), ("topic", t)] for t in TOPICS])


@st.composite
def bodies(draw: st.DrawFn) -> tuple[dict[str, str], bytes, bytes]:
    """Headers, the body as sent and the body before any content encoding.

    Half are forms as browsers and mail providers send them (possibly compressed), so that
    the fuzzing also reaches what a valid request does; the rest mix any media type,
    charset and Content-Encoding with any body, invalid UTF-8 among it.
    """
    pairs = draw(st.one_of(well_formed, form_pairs))
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["urlencoded", "multipart"]))
        content_type = (draw(st.sampled_from([FORM, f"{FORM}; charset=utf-8"]))
                        if kind == "urlencoded" else "multipart/form-data; boundary=b0undary")
        encoding = draw(st.sampled_from([None, "identity", "gzip", "deflate", "br"]))
    else:
        kind = draw(st.sampled_from(["urlencoded", "multipart", "raw", "json"]))
        content_type = draw(st.sampled_from(CONTENT_TYPES))
        encoding = draw(st.sampled_from(ENCODINGS))
    if kind == "urlencoded":
        plain = urlencode(pairs).encode()
    elif kind == "multipart":
        plain = _multipart(pairs)
    elif kind == "json":
        plain = json.dumps(dict(pairs)).encode()
    else:
        plain = draw(st.binary(max_size=200))
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    sent = {"gzip": gzip.compress, "deflate": zlib.compress,
            "br": brotli.compress}.get(encoding or "", lambda b: b)(plain)
    if encoding is not None:
        headers["Content-Encoding"] = encoding.removesuffix("-garbage")
    for name in ("User-Agent", "Accept-Language"):
        if draw(st.booleans()):
            headers[name] = draw(latin1_header)
    return headers, sent, plain


def pages_of(valid: list[str]) -> list[tuple[str, str]]:
    """Each valid token with its own page (the site fixture lists them in this order)."""
    return [("preferences", valid[0]), *(("u", t) for t in valid[1:-1]), ("confirm", valid[-1])]


def _acts(plain: bytes) -> bool:
    """Whether a body names something a page does (only such a body may change state)."""
    return any(word.encode() in plain for word in (*PAGE_ACTIONS, "One-Click"))


# -- pages -------------------------------------------------------------------------------


async def test_forged_and_mangled_tokens_change_nothing(site, database_url):
    client, settings, valid = site
    orm = client.app[DB]
    before = await snapshot(orm)

    def work(bridge: Bridge) -> None:
        @budget(database_url, sqlite=100, postgres=25)
        @given(token=tokens_near(valid), page=st.sampled_from(["u", "preferences", "confirm"]),
               post=st.one_of(st.none(), st.sampled_from(
                   [{"List-Unsubscribe": "One-Click"}] + [{"action": a} for a in PAGE_ACTIONS])))
        def one(token: str, page: str, post: dict | None) -> None:
            url = f"/{page}/{quote(token, safe='')}"
            status, media, body = bridge.run(_request(client, "POST" if post else "GET", url,
                                                      data=post))
            assert_sane(status, body, (token, page, post))
            assert 400 <= status < 500, (status, token)
            if status == 404 and media == "text/html":
                assert "not valid" in body.decode() or "nicht gültig" in body.decode()
            assert bridge.run(snapshot(orm)) == before, (token, page, post)

        one()

    await Bridge.off_loop(work)


async def test_any_body_and_headers_on_valid_links(site, database_url):
    client, settings, valid = site
    orm = client.app[DB]
    seen: Counter[str] = Counter()

    def work(bridge: Bridge) -> None:
        @budget(database_url, sqlite=80, postgres=20)
        @given(target=st.one_of(st.sampled_from(pages_of(valid)), st.tuples(
                   st.sampled_from(["u", "preferences", "confirm"]), st.sampled_from(valid))),
               request=bodies())
        def one(target: tuple[str, str], request: tuple[dict, bytes, bytes]) -> None:
            page, token = target
            headers, sent, plain = request
            bridge.run(resubscribe(client))
            before = bridge.run(snapshot(orm))
            status, _, body = bridge.run(_request(client, "POST", f"/{page}/{token}",
                                                  data=sent, headers=headers))
            assert_sane(status, body, (page, headers, sent))
            after = bridge.run(snapshot(orm))
            if status >= 400 or not _acts(plain):
                assert after == before, (status, page, headers, plain)
            seen["refused" if status >= 400 else "changed" if after != before else "kept"] += 1

        one()

    await Bridge.off_loop(work)
    # The fuzzing reached both sides: bodies refused, and bodies that did withdraw. (The
    # PostgreSQL run takes a smaller share of the same examples; SQLite's proves reach.)
    if backend(database_url) == "sqlite":
        assert seen["refused"] and seen["changed"], seen


async def test_way_in_form_never_fails_and_changes_nothing_when_refused(site, database_url):
    client, settings, _ = site
    orm = client.app[DB]

    def work(bridge: Bridge) -> None:
        @budget(database_url, sqlite=50, postgres=15)
        @given(request=bodies())
        def one(request: tuple[dict, bytes, bytes]) -> None:
            headers, sent, plain = request
            before = bridge.run(snapshot(orm))
            status, _, body = bridge.run(_request(client, "POST", "/preferences", data=sent,
                                                  headers=headers))
            assert_sane(status, body, (headers, sent))
            if status >= 400 or b"alice" not in plain:
                assert bridge.run(snapshot(orm)) == before, (status, headers, plain)

        one()

    await Bridge.off_loop(work)


# -- webhooks ----------------------------------------------------------------------------

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
        @given(payload=bounce_bodies, auth=st.sampled_from(AUTHS), raw=st.booleans(),
               request=bodies())
        def one(payload: object, auth: dict | None, raw: bool,
                request: tuple[dict, bytes, bytes]) -> None:
            headers, sent, _ = request
            if not raw:  # a JSON body as the API expects it, or the fuzzed body as is
                headers, sent = {"Content-Type": "application/json"}, json.dumps(
                    payload).encode()
            before = bridge.run(snapshot(orm))
            status, media, body = bridge.run(_request(
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
    if backend(database_url) == "sqlite":
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
            status, media, body = bridge.run(_request(client, "POST", path, data=sent,
                                                      headers=headers))
            assert_sane(status, body, (path, pairs, signature))
            seen["accepted" if signature == "right" and status < 400 else "refused"] += 1
            if signature != "right" or status >= 400:
                assert status >= 400 and media == "application/problem+json", (status, media)
                assert bridge.run(snapshot(orm)) == before, (path, pairs, signature)
            bridge.run(resubscribe(client))

        one()

    await Bridge.off_loop(work)
    if backend(database_url) == "sqlite":
        assert seen["accepted"] and seen["refused"], seen


async def _request(client, method: str, url: str, **kwargs) -> tuple[int, str, bytes]:  # noqa: ANN001
    resp = await client.request(method, url, allow_redirects=False, **kwargs)
    return resp.status, resp.content_type, await resp.read()
