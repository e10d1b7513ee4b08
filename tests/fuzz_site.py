"""What the fuzz tests of the pages and webhooks share: the app with Alice subscribed to
every topic, her valid tokens, and hypothesis strategies for HTTP requests."""

from __future__ import annotations

import gzip
import json
import zlib
from urllib.parse import urlencode, urlsplit

import brotli
from hypothesis import strategies as st
from support import ADMIN, APP, environ_for

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


async def make_site(aiohttp_client, database_url, tmp_path):  # noqa: ANN001, ANN201
    """The app with Twilio's token set, Alice subscribed to every topic, and her tokens:
    preferences, unsubscribe per topic and for all, and the newsletter's confirmation."""
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


def multipart(pairs: list[tuple[str, str]]) -> bytes:
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
        plain = multipart(pairs)
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


def acts(plain: bytes) -> bool:
    """Whether a body names something a page does (only such a body may change state)."""
    return any(word.encode() in plain for word in (*PAGE_ACTIONS, "One-Click"))


# -- pages -------------------------------------------------------------------------------

async def request(client, method: str, url: str, **kwargs) -> tuple[int, str, bytes]:  # noqa: ANN001
    resp = await client.request(method, url, allow_redirects=False, **kwargs)
    return resp.status, resp.content_type, await resp.read()

