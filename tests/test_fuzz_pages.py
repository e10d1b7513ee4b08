"""Hypothesis against the public pages: tokens, query strings, form bodies, headers,
charsets and content encodings.

Whatever arrives: never a 5xx, never a traceback, and a request that is refused (any 4xx,
any token that is not exactly a valid one, any GET) leaves every table as it was,
compared row by row.
"""

from __future__ import annotations

import gzip
from collections import Counter
from urllib.parse import quote, urlencode

import pytest
from fuzz_site import (
    FORM,
    PAGE_ACTIONS,
    acts,
    bodies,
    latin1_header,
    make_site,
    pages_of,
    request,
    resubscribe,
    texts,
)
from fuzzing import Bridge, assert_sane, budget, tokens_near
from hypothesis import example, given
from hypothesis import strategies as st
from support import snapshot

from notify.web.endpoints import DB


@pytest.fixture
async def site(aiohttp_client, database_url, tmp_path):  # noqa: ANN001, ANN201
    return await make_site(aiohttp_client, database_url, tmp_path)


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
            status, media, body = bridge.run(request(client, "POST" if post else "GET", url,
                                                      data=post))
            assert_sane(status, body, (token, page, post))
            assert 400 <= status < 500, (status, token)
            if status == 404 and media == "text/html":
                assert "not valid" in body.decode() or "nicht gültig" in body.decode()
            assert bridge.run(snapshot(orm)) == before, (token, page, post)

        one()

    await Bridge.off_loop(work)


async def test_a_get_with_any_query_and_headers_changes_nothing(site, database_url):
    """Mail scanners and prefetchers open links: a GET never changes anything."""
    client, settings, valid = site
    orm = client.app[DB]
    before = await snapshot(orm)
    paths = [f"/{page}/{token}" for page, token in pages_of(valid)] + ["/preferences",
                                                                      "/policy"]

    def work(bridge: Bridge) -> None:
        @budget(database_url, sqlite=60, postgres=15)
        @given(path=st.sampled_from(paths), query=st.lists(st.tuples(
                   st.one_of(st.sampled_from(["saved", "action", "topic", "email"]), texts),
                   st.one_of(st.sampled_from(["1", "confirm", *PAGE_ACTIONS]), texts)),
                   max_size=4),
               language=st.one_of(st.none(), latin1_header))
        def one(path: str, query: list[tuple[str, str]], language: str | None) -> None:
            headers = {"Accept-Language": language} if language is not None else {}
            url = path + ("?" + urlencode(query) if query else "")
            status, media, body = bridge.run(request(client, "GET", url, headers=headers))
            assert_sane(status, body, (url, headers))
            assert status in (200, 404) and media == "text/html", (status, url)
            assert bridge.run(snapshot(orm)) == before, url

        one()

    await Bridge.off_loop(work)


async def test_any_body_and_headers_on_valid_links(site, database_url):
    client, settings, valid = site
    orm = client.app[DB]
    seen: Counter[str] = Counter()

    def work(bridge: Bridge) -> None:
        @budget(database_url, sqlite=80, postgres=20)
        # Explicit examples first (always run, whatever the seed): a mail provider's
        # one-click POST, and the page's button with a compressed body.
        @example(target=("u", valid[1]), req=({"Content-Type": FORM},
                                              b"List-Unsubscribe=One-Click",
                                              b"List-Unsubscribe=One-Click"))
        @example(target=("u", valid[-2]), req=({"Content-Type": FORM, "Content-Encoding": "gzip"},
                                               gzip.compress(b"action=unsubscribe"),
                                               b"action=unsubscribe"))
        @given(target=st.one_of(st.sampled_from(pages_of(valid)), st.tuples(
                   st.sampled_from(["u", "preferences", "confirm"]), st.sampled_from(valid))),
               req=bodies())
        def one(target: tuple[str, str], req: tuple[dict, bytes, bytes]) -> None:
            page, token = target
            headers, sent, plain = req
            bridge.run(resubscribe(client))
            before = bridge.run(snapshot(orm))
            status, _, body = bridge.run(request(client, "POST", f"/{page}/{token}",
                                                  data=sent, headers=headers))
            assert_sane(status, body, (page, headers, sent))
            after = bridge.run(snapshot(orm))
            if status >= 400 or not acts(plain):
                assert after == before, (status, page, headers, plain)
            seen["refused" if status >= 400 else "changed" if after != before else "kept"] += 1

        one()

    await Bridge.off_loop(work)
    # Both sides were reached: bodies refused, and bodies that did withdraw.
    assert seen["refused"] and seen["changed"], seen


async def test_way_in_form_never_fails_and_changes_nothing_when_refused(site, database_url):
    client, settings, _ = site
    orm = client.app[DB]

    def work(bridge: Bridge) -> None:
        @budget(database_url, sqlite=50, postgres=15)
        @given(req=bodies())
        def one(req: tuple[dict, bytes, bytes]) -> None:
            headers, sent, plain = req
            before = bridge.run(snapshot(orm))
            status, _, body = bridge.run(request(client, "POST", "/preferences", data=sent,
                                                  headers=headers))
            assert_sane(status, body, (headers, sent))
            if status >= 400 or b"alice" not in plain:
                assert bridge.run(snapshot(orm)) == before, (status, headers, plain)

        one()

    await Bridge.off_loop(work)


# -- webhooks ----------------------------------------------------------------------------
