"""notify.pace: a rate that holds in every one-second window and keeps a short lull's credit.

Lower bounds on time, which a slow machine cannot break (it only makes sends later), except
the lull test's one upper bound: 60 ms for five sends that the pace lets through at once.
"""

from __future__ import annotations

import asyncio
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
    # 20 a second with a bucket of 2: the bucket alone lets 21 through in the first
    # second (2 at once, then one each 50 ms); the window holds the 21st back to 1 s.
    start = time.monotonic()
    stamps = await paced(Pace(20), 45)
    assert stamps[40] - start >= 2.0
    for first, later in zip(stamps, stamps[20:], strict=False):
        assert later - first >= 1.0 - 0.02


async def test_sends_are_spaced_out_not_let_through_a_second_at_a_time():
    stamps = await paced(Pace(20), 10)
    # Two at once (a tenth of a second's worth), then one each 50 ms.
    assert stamps[9] - stamps[0] >= 8 * 0.05 - 0.02


async def test_a_lull_shorter_than_the_bucket_is_made_up_afterwards():
    pace = Pace(50)  # a bucket of 5: a tenth of a second's worth
    await paced(pace, 5)
    await asyncio.sleep(0.15)
    before = time.monotonic()
    await paced(pace, 5)
    # Spaced at the rate these 5 would take 80 ms; the lull's credit lets them go at once.
    assert time.monotonic() - before < 0.06


def test_a_rate_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        Pace(0)
