"""notify.pace: a rate that holds in every one-second window and on average.

Lower bounds on time, which a slow machine cannot break (it only makes sends later), and
one upper bound on the median gap between sends, which the odd stall does not move.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from notify.pace import Pace


async def paced(pace: Pace, count: int) -> list[float]:
    """When each of ``count`` concurrent senders was let through."""
    stamps: list[float] = []

    async def one() -> None:
        await pace.acquire()
        stamps.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(count)))
    return sorted(stamps)


async def test_no_one_second_window_holds_more_than_the_rate():
    # 20 a second: the bucket alone (26 a second, one at a time) lets 26 through in the
    # first second; the window holds the 21st back to 1 s and the 41st to 2 s.
    start = time.monotonic()
    stamps = await paced(Pace(20), 45)
    assert stamps[40] - start >= 2.0
    for first, later in zip(stamps, stamps[20:], strict=False):
        assert later - first >= 1.0 - 0.02


async def test_sends_are_spaced_out_not_let_through_in_bunches():
    stamps = await paced(Pace(20), 10)
    # One at a time, at 1.3 times the rate: 26 a second.
    assert stamps[9] - stamps[0] >= 9 / 26 - 0.02


async def test_below_a_second_the_pace_runs_ahead_to_make_up_for_pauses():
    # 60 sends at 100 a second fit in one second's window: the bucket spaces them at 130
    # a second, not 100, so a sender that pauses between batches still reaches the rate
    # over the second. The median gap, so that a stall of a loaded machine does not count.
    start = time.monotonic()
    stamps = await paced(Pace(100), 60)
    assert stamps[-1] - start >= 59 / 130 - 0.02
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert statistics.median(gaps) < 1 / 100  # a bucket at the rate itself: 1/100 or more


def test_a_rate_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        Pace(0)
