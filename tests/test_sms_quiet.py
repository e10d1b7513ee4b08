"""Quiet hours: the pure window computation, across midnight and daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from notify.sms.quiet import is_quiet, opens_at, zone_for

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
NINE_PM, EIGHT_AM = time(21), time(8)


def at(zone, *args):
    return datetime(*args, tzinfo=zone)


@pytest.mark.parametrize(("local", "quiet"), [
    (time(20, 59), False), (time(21, 0), True), (time(23, 59), True), (time(0, 0), True),
    (time(7, 59), True), (time(8, 0), False), (time(12, 0), False),
])
def test_is_quiet_across_midnight(local, quiet):
    assert is_quiet(local, NINE_PM, EIGHT_AM) is quiet


def test_window_within_one_day_and_switched_off():
    assert is_quiet(time(3), time(1), time(6))
    assert not is_quiet(time(7), time(1), time(6))
    assert not is_quiet(time(23), time(0), time(0))


def test_not_quiet_means_no_wait():
    assert opens_at(at(BERLIN, 2025, 1, 15, 12, 0), BERLIN, NINE_PM, EIGHT_AM) is None


def test_late_evening_waits_for_next_morning():
    opens = opens_at(at(BERLIN, 2025, 1, 15, 23, 0), BERLIN, NINE_PM, EIGHT_AM)
    assert opens == datetime(2025, 1, 16, 7, 0, tzinfo=UTC)  # 08:00 CET


def test_early_morning_waits_until_eight_the_same_day():
    opens = opens_at(at(NEW_YORK, 2025, 1, 16, 3, 30), NEW_YORK, NINE_PM, EIGHT_AM)
    assert opens == datetime(2025, 1, 16, 13, 0, tzinfo=UTC)  # 08:00 EST


def test_spring_forward_night_opens_at_eight_summer_time():
    # Berlin: 30 March 2025 02:00 CET -> 03:00 CEST. The night is an hour shorter.
    opens = opens_at(at(BERLIN, 2025, 3, 29, 22, 0), BERLIN, NINE_PM, EIGHT_AM)
    assert opens == datetime(2025, 3, 30, 6, 0, tzinfo=UTC)  # 08:00 CEST


def test_fall_back_night_opens_at_eight_winter_time():
    # New York: 2 November 2025 02:00 EDT -> 01:00 EST. The night is an hour longer.
    opens = opens_at(at(NEW_YORK, 2025, 11, 1, 21, 30), NEW_YORK, NINE_PM, EIGHT_AM)
    assert opens == datetime(2025, 11, 2, 13, 0, tzinfo=UTC)  # 08:00 EST
    # 01:30 happens twice that night; both are quiet and open at the same instant.
    for fold in (0, 1):
        ambiguous = datetime(2025, 11, 2, 1, 30, tzinfo=NEW_YORK, fold=fold)
        assert opens_at(ambiguous, NEW_YORK, NINE_PM, EIGHT_AM) == opens


def test_an_end_inside_the_dst_gap_opens_when_the_gap_ends():
    # A window ending at 02:30 on the night 02:00 CET jumps to 03:00 CEST: it opens at 03:00.
    opens = opens_at(at(BERLIN, 2025, 3, 30, 1, 0), BERLIN, time(22), time(2, 30))
    assert opens == datetime(2025, 3, 30, 1, 0, tzinfo=UTC)
    assert opens.astimezone(BERLIN).time() == time(3, 0)


def test_instants_given_in_utc_are_judged_in_the_recipients_zone():
    now = datetime(2025, 1, 16, 4, 0, tzinfo=UTC)  # 05:00 in Berlin, 23:00 in New York
    assert opens_at(now, BERLIN, NINE_PM, EIGHT_AM) == datetime(2025, 1, 16, 7, tzinfo=UTC)
    assert opens_at(now, NEW_YORK, NINE_PM, EIGHT_AM) == datetime(2025, 1, 16, 13, tzinfo=UTC)


def test_zone_for_prefers_the_user_then_an_unambiguous_country_then_the_default():
    assert zone_for("America/Chicago", "+4915123456789", "UTC") == ZoneInfo("America/Chicago")
    assert zone_for(None, "+4915123456789", "UTC") == BERLIN
    # A Washington DC area code names one zone; a mobile in Australia does not.
    assert zone_for(None, "+12025550123", "UTC") == NEW_YORK
    assert zone_for(None, "+61412345678", "Asia/Tokyo") == ZoneInfo("Asia/Tokyo")
    assert zone_for("Not/AZone", "+4915123456789", "UTC") == BERLIN
    assert zone_for(None, "garbage", "UTC") == ZoneInfo("UTC")
    assert zone_for(None, None, "UTC") == ZoneInfo("UTC")
