"""How many SMS segments a text takes (3GPP TS 23.038 and TS 23.040): pure, no I/O.

A text that fits the GSM 03.38 default alphabet is sent as GSM-7: a character of the basic
table is one septet, one of the extension table (``€ [ ] { } | ~ ^ \\`` and form feed) is
two (an escape and the character). One segment holds 160 septets; a longer text is split
into segments of 153, since each carries a 7-octet user data header. Any other character
makes the whole text UCS-2: 70 UTF-16 code units in one segment, 67 each when split, and a
character outside the Basic Multilingual Plane (most emoji) takes two units.

Which characters are GSM and how many septets each takes comes from ``gsm0338`` (a small
MIT-licensed codec for exactly this alphabet; we found no maintained package on PyPI that
counts segments). The splitting is written here because no such package does it the way
carriers do: an escape pair or a surrogate pair is never cut across two segments, so the
boundary moves and a text can need one segment more than its length divided by 153 or 67.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import gsm0338  # noqa: F401 - registers the "gsm03.38" codec

GSM_SINGLE = 160
GSM_MULTI = 153
UCS2_SINGLE = 70
UCS2_MULTI = 67


class Encoding(StrEnum):
    GSM7 = "gsm7"  # the GSM 03.38 default alphabet and its extension table
    UCS2 = "ucs2"  # UTF-16: any text with a character outside GSM 03.38


@dataclass(frozen=True, slots=True)
class Count:
    """``units`` is septets for GSM-7 and UTF-16 code units for UCS-2."""

    encoding: Encoding
    units: int
    segments: int


def gsm_septets(char: str) -> int | None:
    """Septets of one character in GSM-7, or None when GSM-7 cannot carry it."""
    # ESC itself is the extension table's prefix, never a character of a message.
    if char == "\x1b":
        return None
    try:
        return len(char.encode("gsm03.38"))
    except UnicodeEncodeError:
        return None


def count(text: str) -> Count:
    """The encoding, length and number of segments of ``text``; an empty text is 1."""
    septets = [gsm_septets(char) for char in text]
    if all(size is not None for size in septets):
        sizes = [size for size in septets if size is not None]
        return Count(Encoding.GSM7, sum(sizes), _pack(sizes, GSM_SINGLE, GSM_MULTI))
    sizes = [2 if ord(char) > 0xFFFF else 1 for char in text]
    return Count(Encoding.UCS2, sum(sizes), _pack(sizes, UCS2_SINGLE, UCS2_MULTI))


def _pack(sizes: list[int], single: int, multi: int) -> int:
    """Segments needed for characters of these sizes, never splitting one character."""
    if sum(sizes) <= single:
        return 1
    segments, used = 1, 0
    for size in sizes:
        if used + size > multi:
            segments += 1
            used = 0
        used += size
    return segments
