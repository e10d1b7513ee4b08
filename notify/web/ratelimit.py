"""Abuse limits per client IP, kept in the process's memory (``limits`` library).

Per process: with several web processes each counts on its own, which keeps the limits
within a small factor and needs no shared store.

Three limits, each a setting (``NOTIFY_*_RATE_LIMIT``; empty switches it off):
- every request to the public pages, generous because mail providers send RFC 8058
  one-click POSTs for many users from few addresses;
- requests whose link token (or Twilio signature) does not verify: past it, every token
  route refuses that IP for the window, so guessing tokens costs hours, not seconds;
- API calls refused for a missing or wrong key: past it, every API call from that IP is
  refused for the window, valid key or not, so the refusal tells a guesser nothing.
"""

from __future__ import annotations

import ipaddress
import math
import time

from aiohttp import web
from limits import RateLimitItem, parse, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from notify.settings import Settings

#: "A way in": mailing a fresh preference link. Per address, so nobody can flood a
#: mailbox; per IP, so nobody can probe many addresses.
WAY_IN_PER_ADDRESS = parse("3/hour")
WAY_IN_PER_IP = parse("10/minute")

#: The public pages, and those of them that carry a token.
PUBLIC_PREFIXES = ("/u/", "/preferences", "/confirm/", "/policy")
TOKEN_PREFIXES = ("/u/", "/preferences/", "/confirm/", "/webhooks/twilio/")
#: Where a key is asked for.
API_PREFIXES = ("/v1/", "/webhooks/bounces", "/metrics")


class Limiter:
    def __init__(self, settings: Settings) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self.public = _items(settings.public_rate_limit)
        self.bad_token = _items(settings.bad_token_rate_limit)
        self.auth_failure = _items(settings.auth_failure_rate_limit)

    async def hit(self, item: RateLimitItem, *keys: str) -> bool:
        return await self._limiter.hit(item, *keys)

    async def allow_way_in(self, ip: str, address: str) -> bool:
        # Both are counted, so a refused address still uses up the IP's allowance.
        by_ip = await self.hit(WAY_IN_PER_IP, "way-in-ip", ip)
        by_address = await self.hit(WAY_IN_PER_ADDRESS, "way-in-address", address)
        return by_ip and by_address

    async def take(self, items: list[RateLimitItem], kind: str, ip: str) -> int:
        """Count one request against each limit; 0 if all allow it, else the seconds until
        the fullest window has room again (for Retry-After)."""
        wait = 0
        for item in items:
            if not await self._limiter.hit(item, kind, ip):
                wait = max(wait, await self.wait(item, kind, ip))
        return wait

    async def exhausted(self, items: list[RateLimitItem], kind: str, ip: str) -> int:
        """Like ``take`` without counting: for limits counted only on failure."""
        wait = 0
        for item in items:
            if not await self._limiter.test(item, kind, ip):
                wait = max(wait, await self.wait(item, kind, ip))
        return wait

    async def wait(self, item: RateLimitItem, kind: str, ip: str) -> int:
        stats = await self._limiter.get_window_stats(item, kind, ip)
        return max(1, math.ceil(stats.reset_time - time.time()))


def _items(text: str) -> list[RateLimitItem]:
    return list(parse_many(text)) if text else []


def client_ip(request: web.Request, trusted: tuple[str, ...]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the
    nearest address in X-Forwarded-For that is not itself a trusted proxy."""
    peer = request.remote or "?"
    if peer not in trusted:
        return peer
    hops = [hop.strip() for hop in ",".join(request.headers.getall("X-Forwarded-For", []))
            .split(",") if hop.strip()]
    for hop in reversed(hops):
        try:
            address = str(ipaddress.ip_address(hop))
        except ValueError:
            return peer  # a garbled header: believe only the proxy itself
        if address not in trusted:
            return address
    return peer
