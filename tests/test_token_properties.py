"""Tokens as properties: no mutation of a valid token verifies, and a token made for one
user or topic never acts on another (pure, on notify.tokens; then once over HTTP)."""

from __future__ import annotations

import itertools
from urllib.parse import urlsplit

from fuzzing import SCALE, URLSAFE, mutated
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support import ADMIN, APP

from notify.models import ConsentEvent, User
from notify.tokens import (
    ALL_TOPICS,
    AddressPurpose,
    Link,
    Purpose,
    address_token,
    sign,
    verify,
    verify_address_token,
)

KEYS = [("k2", b"n" * 40), ("k1", b"o" * 40)]
#: Pure functions, microseconds an example: a generous, repeatable budget.
PURE = settings(max_examples=200 * SCALE, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

links = st.builds(
    Link,
    handle=st.text(URLSAFE, min_size=1, max_size=32),
    purpose=st.sampled_from(list(Purpose)),
    topic=st.one_of(st.just(ALL_TOPICS), st.from_regex(r"[a-z][a-z0-9_]{0,30}", fullmatch=True)),
    delivery=st.one_of(st.none(), st.integers(1, 2**53)),
)
keys = st.sampled_from([KEYS, KEYS[1:]])  # signed with the current or the older key


any_links = st.builds(
    Link,
    handle=st.one_of(st.text(URLSAFE, max_size=32), st.text(max_size=12)),
    purpose=st.sampled_from(list(Purpose)),
    topic=st.one_of(st.just(ALL_TOPICS), st.text(max_size=12),
                    st.from_regex(r"[a-z][a-z0-9_]{0,30}", fullmatch=True)),
    delivery=st.one_of(st.none(), st.integers(-(2**70), 2**70), st.booleans()),
)


@PURE
@given(any_links, st.integers(-(2**40), 2**40))
def test_the_written_payload_is_the_json_encoders_byte_for_byte(link, day):
    """tokens._payload writes plain links' JSON itself; anything else (quotes, escapes,
    non-ASCII, a bool) goes to the encoder. Either way: the encoder's exact text."""
    from notify.tokens import _compact_json, _payload

    body = {"h": link.handle, "p": link.purpose.value, "t": link.topic, "i": day}
    if link.delivery is not None:
        body["d"] = link.delivery
    assert _payload(link, day) == _compact_json(body)


def same_link(a: Link, b: Link) -> bool:
    return (a.handle, a.purpose, a.topic, a.delivery) == (b.handle, b.purpose, b.topic,
                                                          b.delivery)


@PURE
@given(link=links, signing=keys, data=st.data())
def test_no_mutation_of_a_valid_token_verifies(link, signing, data):
    token = sign(link, signing)
    assert same_link(verify(token, KEYS), link)
    changed = data.draw(mutated(token), label="mutated")
    assume(changed != token)
    assert verify(changed, KEYS) is None


@PURE
@given(a=links, b=links, signing=keys, order=st.permutations(range(3)),
       picks=st.tuples(*[st.sampled_from("ab")] * 3))
def test_a_token_acts_only_for_its_own_user_and_topic(a, b, signing, order, picks):
    assume(not same_link(a, b))
    token_a, token_b = sign(a, signing), sign(b, signing)
    assert same_link(verify(token_a, KEYS), a) and same_link(verify(token_b, KEYS), b)
    # Any splice of the two tokens' segments (key id, payload, MAC), in any order, is
    # either one of the two tokens unchanged or nothing at all.
    parts = {"a": token_a.split("."), "b": token_b.split(".")}
    spliced = ".".join(parts[picks[i]][order[i]] for i in range(3))
    found = verify(spliced, KEYS)
    if spliced == token_a:
        assert same_link(found, a)
    elif spliced == token_b:
        assert same_link(found, b)
    else:
        assert found is None, (spliced, found)


@PURE
@given(purpose=st.sampled_from(list(AddressPurpose)), delivery=st.integers(1, 2**53),
       other=st.integers(1, 2**53), data=st.data())
def test_address_tokens_survive_only_a_change_of_case(purpose, delivery, other, data):
    token = address_token(purpose, delivery, KEYS)
    assert verify_address_token(token, KEYS) == (purpose, delivery)
    # Mail systems may change the case of a local part: that, and only that, still works.
    assert verify_address_token(token.upper(), KEYS) == (purpose, delivery)
    changed = data.draw(st.one_of(
        st.integers(0, len(token) - 1).flatmap(lambda i: st.sampled_from(
            "abcdefghijklmnopqrstuvwxyz234567-").filter(lambda c: c != token[i]).map(
                lambda c: token[:i] + c + token[i + 1:])),
        st.integers(0, len(token) - 1).map(lambda n: token[:n]),
        st.text("abcdefghijklmnopqrstuvwxyz234567", min_size=1, max_size=4).map(
            lambda tail: token + tail)), label="changed")
    assert verify_address_token(changed, KEYS) is None
    # Another delivery's MAC never vouches for this delivery.
    assume(other != delivery)
    forged = f"{purpose.value}{delivery}-{address_token(purpose, other, KEYS).split('-')[1]}"
    assert verify_address_token(forged, KEYS) is None


_serial = itertools.count()


async def test_one_click_with_a_users_token_changes_only_that_users_topic(client, orm):
    topics = ("email_notifications", "sms_notifications", "newsletter")
    people = []
    for name in ("ann", "ben"):
        n = next(_serial)
        resp = await client.put(f"/v1/users/{name}", headers=APP, json={
            "email": f"{name}@example.com", "email_verified": True,
            "phone": f"+49151234567{n}{n}"})
        assert resp.status == 201
        for topic in topics:
            resp = await client.put(f"/v1/users/{name}/consents/{topic}", headers=ADMIN, json={
                "subscribed": True, "source": "import", "note": "earlier system"})
            assert resp.status == 200
        found = await (await client.get(f"/v1/users/{name}/links", headers=APP)).json()
        people.append(found["unsubscribe"])
    for topic in topics:
        before = await _events(orm)
        resp = await client.post(urlsplit(people[0][topic]).path,
                                 data={"List-Unsubscribe": "One-Click"})
        assert resp.status == 200
        after = await _events(orm)
        added = after[len(before):]
        # Exactly one new event: Ann's withdrawal of this topic; Ben and Ann's other
        # topics are untouched.
        assert [(e[0], e[1], e[2]) for e in added] == [("ann", topic, "unsubscribed")]
        assert after[:len(before)] == before
    states = {name: (await (await client.get(f"/v1/users/{name}/consents", headers=APP)
                            ).json())["consents"] for name in ("ann", "ben")}
    assert {c["state"] for c in states["ann"]} == {"unsubscribed"}
    assert {c["state"] for c in states["ben"]} == {"subscribed"}


async def _events(orm) -> list[tuple]:  # noqa: ANN001
    with orm:
        ids = {u.id: u.external_id for u in await User.all()}
        return [(ids[e.user_id], e.topic, e.to_state, e.source)
                for e in await ConsentEvent.all().order_by("id")]
