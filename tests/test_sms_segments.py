"""SMS segment counting: GSM-7 septets and UCS-2 code units, and where segments split."""

from __future__ import annotations

import pytest

from notify.sms.segments import Encoding, count


@pytest.mark.parametrize(("text", "encoding", "units", "segments"), [
    ("", Encoding.GSM7, 0, 1),
    ("a" * 160, Encoding.GSM7, 160, 1),
    ("a" * 161, Encoding.GSM7, 161, 2),
    ("a" * 306, Encoding.GSM7, 306, 2),
    ("a" * 307, Encoding.GSM7, 307, 3),
    # Basic-table letters outside ASCII are one septet; extension characters two.
    ("Ärger über Öl für ß, £5 @ 10¥", Encoding.GSM7, 29, 1),
    ("€[]{}|~^\\", Encoding.GSM7, 18, 1),
    ("a" * 159 + "€", Encoding.GSM7, 161, 2),
    # One character outside GSM 03.38 (ç, á, `) makes the whole text UCS-2.
    ("a" * 69 + "ç", Encoding.UCS2, 70, 1),
    ("a" * 70 + "á", Encoding.UCS2, 71, 2),
    ("Ж" * 134, Encoding.UCS2, 134, 2),
    ("Ж" * 135, Encoding.UCS2, 135, 3),
    ("`", Encoding.UCS2, 1, 1),
    # A character beyond the BMP is two UTF-16 code units.
    ("😀" * 35, Encoding.UCS2, 70, 1),
    ("😀" * 36, Encoding.UCS2, 72, 2),
])
def test_count(text, encoding, units, segments):
    assert count(text) == (count(text).__class__(encoding, units, segments))


def test_an_escape_pair_is_never_split_across_segments():
    # 152 septets, then "€" (2 septets) would straddle the 153-septet boundary: it moves
    # to the second segment, so 152 + 2 + 152 = 306 septets take three segments, not two.
    text = "a" * 152 + "€" + "a" * 152
    assert count(text).units == 306
    assert count(text).segments == 3
    assert count("a" * 151 + "€" + "a" * 153).segments == 2


def test_a_surrogate_pair_is_never_split_across_segments():
    text = "Ж" * 66 + "😀" + "Ж" * 66  # 134 units; the emoji would straddle unit 67
    assert count(text).units == 134
    assert count(text).segments == 3
    assert count("Ж" * 65 + "😀" + "Ж" * 67).segments == 2


def test_escape_itself_is_not_gsm_text():
    assert count("a\x1b").encoding is Encoding.UCS2
