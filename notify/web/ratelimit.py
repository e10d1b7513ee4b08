"""Abuse limits for public endpoints, kept in the process's memory (``limits`` library).

Per process: with several web processes each counts on its own, which keeps the limits
within a small factor and needs no shared store.
"""

from __future__ import annotations

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

#: "A way in": mailing a fresh preference link. Per address, so nobody can flood a
#: mailbox; per IP, so nobody can probe many addresses.
WAY_IN_PER_ADDRESS = parse("3/hour")
WAY_IN_PER_IP = parse("10/minute")


class Limiter:
    def __init__(self) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def hit(self, item: RateLimitItem, *keys: str) -> bool:
        return await self._limiter.hit(item, *keys)

    async def allow_way_in(self, ip: str, address: str) -> bool:
        # Both are counted, so a refused address still uses up the IP's allowance.
        by_ip = await self.hit(WAY_IN_PER_IP, "way-in-ip", ip)
        by_address = await self.hit(WAY_IN_PER_ADDRESS, "way-in-address", address)
        return by_ip and by_address
