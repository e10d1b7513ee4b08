"""Signed link tokens: the pure core of every unsubscribe, preference and confirmation link.

A token is ``kid.payload.mac``: the payload names a user by an opaque random handle (never
the main app's id, never an address), a purpose, a topic (or all topics), optionally the
delivery it came in, and the day it was issued. The MAC is HMAC-SHA256 under the secret
named by ``kid``, so keys rotate: the first configured key signs, all of them verify
(``NOTIFY_SECRET_KEYS``). Verification compares in constant time and says only "valid"
or "not valid", never why, so a forger learns nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

ALL_TOPICS = "*"
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
MAX_TOKEN_LENGTH = 512


class Purpose(StrEnum):
    UNSUBSCRIBE = "u"  # one-click and the unsubscribe page (RFC 8058)
    PREFERENCES = "p"  # the preference center
    CONFIRM = "c"  # double opt-in confirmation


#: How long a link keeps working after it was issued. Unsubscribe and preference links sit
#: in old mail, so they last a year (CAN-SPAM asks 30 days, our promise is at least 60);
#: a confirmation link lasts as long as a pending request (settings, pending_days).
LIFETIME = {
    Purpose.UNSUBSCRIBE: timedelta(days=365),
    Purpose.PREFERENCES: timedelta(days=365),
}


@dataclass(frozen=True, slots=True)
class Link:
    handle: str  # the user's opaque handle
    purpose: Purpose
    topic: str = ALL_TOPICS
    delivery: int | None = None
    issued: datetime | None = None  # whole days; set when signing


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hmac(secret: bytes, message: bytes) -> bytes:
    # hmac.digest is OpenSSL's one-shot HMAC: a campaign signs five tokens a message, and
    # this is ~25% faster than copying an hmac.new object with the key mixed in.
    return hmac.digest(secret, message, hashlib.sha256)


def _mac(secret: bytes, kid: str, payload: str) -> str:
    return _b64(_hmac(secret, f"{kid}.{payload}".encode()))


#: json.dumps(separators=...) builds a new encoder on every call.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


#: What JSON prints as it is, between quotes: handles (token_urlsafe) and topic names are.
_PLAIN = re.compile(r"[A-Za-z0-9_*-]*").fullmatch


def _payload(link: Link, day: int) -> str:
    """The link's JSON, as ``_compact_json`` writes it. Written by hand when every string
    is plain and the numbers are ints: the encoder cost a third of a link's token (two
    links a campaign message); tests/test_token_properties.py holds the two equal."""
    handle, topic, delivery = link.handle, link.topic, link.delivery
    if (type(handle) is str and type(topic) is str and _PLAIN(handle) and _PLAIN(topic)
            and type(day) is int
            and (delivery is None or type(delivery) is int)):
        tail = "}" if delivery is None else f',"d":{delivery}}}'
        return f'{{"h":"{handle}","p":"{link.purpose.value}","t":"{topic}","i":{day}{tail}'
    body = {"h": handle, "p": link.purpose.value, "t": topic, "i": day}
    if delivery is not None:
        body["d"] = delivery
    return _compact_json(body)


def sign(link: Link, keys: Sequence[tuple[str, bytes]], now: datetime | None = None) -> str:
    kid, secret = keys[0]
    day = ((now or datetime.now(UTC)) - EPOCH).days
    payload = _b64(_payload(link, day).encode())
    return f"{kid}.{payload}.{_mac(secret, kid, payload)}"


def verify(
    token: str,
    keys: Sequence[tuple[str, bytes]],
    *,
    lifetime: dict[Purpose, timedelta] | None = None,
    now: datetime | None = None,
) -> Link | None:
    """The link a token stands for, or None for anything forged, altered or too old."""
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    kid, payload, mac = parts
    secret = dict(keys).get(kid)
    if secret is None:
        return None
    if not hmac.compare_digest(_mac(secret, kid, payload).encode(), mac.encode()):
        return None
    try:
        body = json.loads(_unb64(payload))
        link = Link(
            handle=str(body["h"]),
            purpose=Purpose(body["p"]),
            topic=str(body["t"]),
            delivery=int(body["d"]) if "d" in body else None,
            issued=EPOCH + timedelta(days=int(body["i"])),
        )
    except (ValueError, KeyError, TypeError):
        return None  # signed by us yet unreadable: only a bug makes one; refuse it all the same
    limits = {**LIFETIME, **(lifetime or {})}
    limit = limits.get(link.purpose)
    if limit is not None and (now or datetime.now(UTC)) - link.issued > limit + timedelta(days=1):
        return None
    return link


class AddressPurpose(StrEnum):
    BOUNCE = "b"  # the VERP Return-Path: bounces+TOKEN@domain
    UNSUBSCRIBE = "u"  # the List-Unsubscribe mailto: unsubscribe+TOKEN@domain
    MESSAGE = "m"  # the Message-ID: names the delivery, and is no credential for anything


def address_token(purpose: AddressPurpose, delivery: int,
                  keys: Sequence[tuple[str, bytes]]) -> str:
    """A token for the local part of an address: lower-case letters and digits only.

    Mail systems may change the case of a local part, so this cannot be the base64 link
    token; it names only a delivery (which names the user and topic in our database) and
    carries 80 bits of HMAC-SHA256, checked against every configured key.
    """
    return f"{purpose.value}{delivery}-{_address_mac(keys[0][1], purpose, delivery)}"


def verify_address_token(token: str, keys: Sequence[tuple[str, bytes]]
                         ) -> tuple[AddressPurpose, int] | None:
    token = token.strip().lower()
    head, _, mac = token.partition("-")
    digits = head[1:]
    if len(token) > 64 or not digits or not (digits.isascii() and digits.isdigit()):
        return None
    try:
        purpose = AddressPurpose(head[0])
    except ValueError:
        return None
    delivery = int(head[1:])
    found = False
    for _, secret in keys:
        # Every key is tried, without stopping early, so timing tells nothing.
        found |= hmac.compare_digest(_address_mac(secret, purpose, delivery).encode(),
                                     mac.encode())
    return (purpose, delivery) if found else None


def _address_mac(secret: bytes, purpose: AddressPurpose, delivery: int) -> str:
    digest = _hmac(secret, f"addr:{purpose.value}:{delivery}".encode())
    return _base32(digest[:10])


#: RFC 4648 base 32 in lower case, two letters (ten bits) at a time.
_BASE32_PAIRS = [a + b for a in "abcdefghijklmnopqrstuvwxyz234567"
                 for b in "abcdefghijklmnopqrstuvwxyz234567"]


def _base32(data: bytes) -> str:
    """``base64.b32encode(data).decode().lower()`` for 10 bytes (80 bits, no padding):
    the stdlib's is written in Python and cost as much as the MAC."""
    number = int.from_bytes(data, "big")
    pairs = _BASE32_PAIRS
    return "".join([pairs[(number >> shift) & 1023] for shift in range(70, -10, -10)])
