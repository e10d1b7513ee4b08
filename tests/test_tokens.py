"""Signed link tokens: what verifies, and everything that must not."""

from __future__ import annotations

import random
import string
from datetime import UTC, datetime, timedelta

import pytest

from notify.tokens import ALL_TOPICS, Link, Purpose, sign, verify

KEYS = [("k2", b"n" * 40), ("k1", b"o" * 40)]
LINK = Link("h4ndle-opaque", Purpose.UNSUBSCRIBE, "newsletter", delivery=42)


def test_round_trip_carries_the_link():
    token = sign(LINK, KEYS)
    found = verify(token, KEYS)
    assert (found.handle, found.purpose, found.topic, found.delivery) == (
        "h4ndle-opaque", Purpose.UNSUBSCRIBE, "newsletter", 42)
    assert token.startswith("k2.")  # the first key signs


def test_the_token_does_not_reveal_a_user_id_or_address():
    token = sign(Link("h4ndle-opaque", Purpose.PREFERENCES), KEYS)
    assert "alice" not in token and "@" not in token
    assert token.replace("-", "").replace("_", "").replace(".", "").isalnum()


def test_older_keys_still_verify_after_rotation():
    old = sign(LINK, [KEYS[1]])
    assert verify(old, KEYS) is not None
    assert verify(old, [("k3", b"z" * 40)]) is None  # key retired: the link stops working


def test_every_single_character_change_is_refused():
    token = sign(LINK, KEYS)
    for index in range(len(token)):
        for replacement in {"A", "b", "0", "-", "_", "."} - {token[index]}:
            altered = token[:index] + replacement + token[index + 1:]
            assert verify(altered, KEYS) is None, (index, replacement)


def test_truncated_extended_and_random_tokens_are_refused():
    token = sign(LINK, KEYS)
    for cut in range(len(token)):
        assert verify(token[:cut], KEYS) is None
    assert verify(token + "x", KEYS) is None
    assert verify(token + ".x", KEYS) is None
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "-_."
    for _ in range(500):
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        assert verify(junk, KEYS) is None
    for junk in ("", "...", "k2..", "k2.e30.", "é.é.é", "k2." + "A" * 600, "\x00"):
        assert verify(junk, KEYS) is None


def test_a_token_for_one_user_or_topic_cannot_be_rebuilt_for_another():
    token = sign(LINK, KEYS)
    kid, payload, mac = token.split(".")
    other = sign(Link("someone-else", Purpose.UNSUBSCRIBE, ALL_TOPICS), KEYS)
    _, other_payload, _ = other.split(".")
    assert verify(f"{kid}.{other_payload}.{mac}", KEYS) is None


def test_lifetime_is_a_year_for_unsubscribe_and_configurable_for_confirmation():
    issued = datetime(2026, 1, 1, tzinfo=UTC)
    token = sign(LINK, KEYS, now=issued)
    assert verify(token, KEYS, now=issued + timedelta(days=300)) is not None
    assert verify(token, KEYS, now=issued + timedelta(days=367)) is None
    confirm = sign(Link("h", Purpose.CONFIRM, "newsletter"), KEYS, now=issued)
    week = {Purpose.CONFIRM: timedelta(days=7)}
    assert verify(confirm, KEYS, lifetime=week, now=issued + timedelta(days=7)) is not None
    assert verify(confirm, KEYS, lifetime=week, now=issued + timedelta(days=9)) is None


@pytest.mark.parametrize("purpose", list(Purpose))
def test_purpose_is_bound_into_the_signature(purpose):
    token = sign(Link("h", purpose), KEYS)
    assert verify(token, KEYS).purpose is purpose
