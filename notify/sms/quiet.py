"""Quiet hours: when an SMS may go out in the recipient's time zone. Pure, no I/O.

No SMS between ``start`` and ``end`` local time (21:00 to 08:00 by default; the TCPA's
8 a.m. to 9 p.m. rule, and common courtesy elsewhere). A message due in the window is not
dropped: it waits until the window opens. Times are computed with ``zoneinfo``, so a
window that spans a daylight-saving change opens at the right instant.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_zones


def is_quiet(local: time, start: time, end: time) -> bool:
    """Whether a local wall-clock time falls in the window [start, end)."""
    if start == end:
        return False  # quiet hours switched off
    if start < end:
        return start <= local < end  # a window within one day, e.g. 01:00-06:00
    return local >= start or local < end  # across midnight, e.g. 21:00-08:00


def opens_at(now: datetime, zone: ZoneInfo, start: time, end: time) -> datetime | None:
    """When the quiet window that ``now`` falls in opens again (UTC), or None if not quiet.

    ``now`` must be timezone-aware. If ``end`` does not exist on that day (it falls in a
    spring-forward gap), the window opens at the first instant after the gap.
    """
    local = now.astimezone(zone)
    if not is_quiet(local.time().replace(tzinfo=None), start, end):
        return None
    day = local.date()
    if start > end and local.time() >= start:
        day += timedelta(days=1)  # evening part of an overnight window: opens tomorrow
    return _instant(day, end, zone)


def _instant(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall-clock time; a time skipped by DST moves forward."""
    naive = datetime.combine(day, wall)
    candidate = naive.replace(tzinfo=zone)
    # A wall time in a gap does not survive a round trip through UTC: PEP 495 maps it to
    # the instant it would be with the offset from before the gap, which is after it.
    as_utc = candidate.astimezone(UTC)
    if as_utc.astimezone(zone).replace(tzinfo=None) != naive:
        # Opening "at 02:30" on a day that jumps from 02:00 to 03:00 means 03:00.
        return _gap_end(naive, zone)
    return as_utc


def _gap_end(naive: datetime, zone: ZoneInfo) -> datetime:
    probe = naive.replace(tzinfo=zone).astimezone(UTC) - timedelta(hours=3)
    # Walk forward minute by minute to the first local time at or after the wall time.
    for _ in range(6 * 60):
        probe += timedelta(minutes=1)
        if probe.astimezone(zone).replace(tzinfo=None) >= naive:
            return probe.replace(second=0, microsecond=0)
    raise AssertionError("no DST gap is longer than three hours")


def zone_for(time_zone: str | None, phone: str | None, default: str) -> ZoneInfo:
    """The recipient's zone: the user's own, else the number's country's when it has only
    one (Germany: yes; the USA: no), else the configured default."""
    if time_zone:
        try:
            return ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            pass  # a zone name the main app sent that this system does not know
    if phone:
        try:
            number = phonenumbers.parse(phone, None)
        except phonenumbers.NumberParseException:
            number = None
        if number is not None:
            zones = phone_zones.time_zones_for_number(number)
            if len(zones) == 1 and zones[0] != phone_zones.UNKNOWN_TIMEZONE:
                try:
                    return ZoneInfo(zones[0])
                except (ZoneInfoNotFoundError, ValueError):
                    pass
    return ZoneInfo(default)
