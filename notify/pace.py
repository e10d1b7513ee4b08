"""A messages-a-second limit (``NOTIFY_SMTP_RATE``, ``NOTIFY_SMS_RATE``) that holds both on
average and in every one-second window of the times sends are let through (at the
provider, by arrival, within 4% at 300 a second).

Two parts, because neither holds both alone (figures: bench/sms_send.py at 300 a second,
counted by arrival at the Twilio stand-in):
- aiolimiter's leaky bucket spaces the sends out, at 1.3 times the rate with a hundredth
  of a second's capacity. The headroom makes up for the sender's pauses between batches
  (claim, checks, outcomes: ~25 ms a batch of 50 texts), which a bucket at the rate itself
  never makes up (7-9% short). The small capacity keeps sends from being let out in
  bunches: those queue behind each other's CPU work and reach the provider bunched (a
  tenth of a second's bucket: the busiest second 3-15% over; this one, at most 4%).
- the last ``rate`` send times: no send goes before the one ``rate`` sends back is a
  second old, so no one-second window holds more than the rate, the headroom included.

The window is a deque rather than ``limits``' moving window (used for the web's abuse
limits): that one answers only yes or no and runs a background expiry task per store,
while waiting needs the time the oldest send leaves the window, which the deque holds.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from aiolimiter import AsyncLimiter

#: The bucket's capacity, in seconds of its rate, and its rate over the limit's.
BURST_SECONDS = 0.01
HEADROOM = 1.3


class Pace:
    def __init__(self, rate: int) -> None:
        if rate < 1:
            raise ValueError("a pace needs a rate of at least 1 a second")
        burst = max(1.0, rate * HEADROOM * BURST_SECONDS)
        self._bucket = AsyncLimiter(burst, burst / (rate * HEADROOM))
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
