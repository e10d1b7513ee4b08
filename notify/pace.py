"""A messages-a-second limit (``NOTIFY_SMTP_RATE``, ``NOTIFY_SMS_RATE``) that holds both on
average and in every one-second window.

Two parts, because neither holds both alone:
- aiolimiter's leaky bucket spaces the sends out. Its capacity is a tenth of a second's
  worth: a sender pauses between batches (claim, checks, outcomes: ~25 ms a batch of 50
  texts, bench/sms_send.py), and a bucket smaller than that pause forgets the credit, so
  the average falls short of the rate (a fiftieth of a second's bucket gave 7-9% short).
- the last ``rate`` send times: no send goes before the one ``rate`` sends back is a
  second old, so no one-second window holds more than the rate, whatever the bucket let
  build up (a bucket alone of a tenth of a second let the busiest second reach 110%).

The window is a deque rather than ``limits``' moving window (used for the web's abuse
limits): that one answers only yes or no and runs a background expiry task per store,
while waiting needs the time the oldest send leaves the window, which the deque holds.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from aiolimiter import AsyncLimiter

#: The bucket's capacity in seconds of the rate: longer than a batch's pause.
BURST_SECONDS = 0.1


class Pace:
    def __init__(self, rate: int) -> None:
        if rate < 1:
            raise ValueError("a pace needs a rate of at least 1 a second")
        burst = max(1.0, rate * BURST_SECONDS)
        self._bucket = AsyncLimiter(burst, burst / rate)
        self._sent: deque[float] = deque(maxlen=rate)
        # One waiter at a time, in order: the others queue on the lock, not on the clock.
        self._turn = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until one more send keeps to the rate, and count it as sent now."""
        async with self._turn:
            await self._bucket.acquire()
            sent = self._sent
            if len(sent) == sent.maxlen:
                wait = sent[0] + 1.0 - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            sent.append(time.monotonic())
