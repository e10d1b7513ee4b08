"""Helpers for the hypothesis tests: budgets, a bridge to the app's event loop, and
strategies for tokens.

Hypothesis runs tests synchronously. The app under test is served by aiohttp's test
server in the test's own event loop, so a hypothesis test runs in a worker thread
(``asyncio.to_thread``) and hands each request to that loop with :func:`Bridge.run`; the
loop serves it meanwhile. Nothing is mocked: real HTTP on loopback, the real database.
"""

from __future__ import annotations

import asyncio
import os
import string
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

T = TypeVar("T")


#: ``NOTIFY_FUZZ_SCALE=20`` multiplies every budget, for a deeper run by hand than CI's.
SCALE = max(1, int(os.environ.get("NOTIFY_FUZZ_SCALE", "1")))


def backend(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgres"


def budget(database_url: str, sqlite: int, postgres: int, *, shrink: bool = True) -> settings:
    """Hypothesis settings with a bounded number of examples, the same ones on every run.

    ``derandomize`` makes CI repeatable (a failure found once is found again); no example
    database is kept between runs for the same reason. PostgreSQL runs the same tests with
    a smaller budget: it is the slower backend, and SQLite has explored the inputs already.
    ``too_slow`` is suppressed because every example is a real HTTP request to a real
    database, which hypothesis' timing heuristics take for a slow generator. Without
    ``shrink`` a failure is reported as found: shrinking a long sequence of HTTP steps can
    take longer than the test's timeout, which would lose the report.
    """
    count = SCALE * (sqlite if backend(database_url) == "sqlite" else postgres)
    phases = list(Phase) if shrink else [Phase.explicit, Phase.reuse, Phase.generate]
    return settings(max_examples=count, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow], phases=phases)


class Bridge:
    """Runs coroutines on the test's event loop from the hypothesis worker thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    @classmethod
    async def off_loop(cls, work: Callable[[Bridge], T]) -> T:
        """Call ``work(bridge)`` in a worker thread while this loop serves its requests."""
        bridge = cls(asyncio.get_running_loop())
        return await asyncio.to_thread(work, bridge)


async def body_of(resp: Any) -> tuple[int, str, bytes]:
    """Status, media type and raw body of an aiohttp client response."""
    return resp.status, resp.content_type, await resp.read()


def assert_sane(status: int, body: bytes, what: object) -> None:
    """Never a server error, never a traceback or an exception name in what we answer."""
    assert status < 500, (status, what, body[:300])
    for leak in (b"Traceback", b'File "', b"Exception", b"Error:"):
        assert leak not in body, (leak, what, body[:500])


# -- tokens ------------------------------------------------------------------------------

URLSAFE = string.ascii_letters + string.digits + "-_"


@st.composite
def mutated(draw: st.DrawFn, token: str) -> str:
    """A valid token changed in one of the ways a mail client, a person or a forger would."""
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "case", "swap", "drop",
                                 "insert", "replace_segment"]))
    kid, payload, mac = token.split(".")
    if kind == "flip":
        i = draw(st.integers(0, len(token) - 1))
        c = draw(st.sampled_from(URLSAFE + ".=%+/ ").filter(lambda c: c != token[i]))
        return token[:i] + c + token[i + 1:]
    if kind == "truncate":
        return token[:draw(st.integers(0, len(token) - 1))]
    if kind == "extend":
        return token + draw(st.text(URLSAFE + ".=", min_size=1, max_size=8))
    if kind == "case":
        i = draw(st.integers(0, len(token) - 1))
        flipped = token[:i] + token[i].swapcase() + token[i + 1:]
        return flipped if flipped != token else token.swapcase()
    if kind == "swap":
        order = draw(st.permutations([kid, payload, mac]))
        return ".".join(order)
    if kind == "drop":
        parts = [kid, payload, mac]
        del parts[draw(st.integers(0, 2))]
        return ".".join(parts)
    if kind == "insert":
        i = draw(st.integers(0, len(token)))
        return token[:i] + draw(st.text(URLSAFE, min_size=1, max_size=4)) + token[i:]
    parts = [kid, payload, mac]
    parts[draw(st.integers(0, 2))] = draw(st.text(URLSAFE, max_size=60))
    return ".".join(parts)


def tokens_near(valid: list[str]) -> st.SearchStrategy[str]:
    """Anything but the valid tokens themselves: mutations of them, random text, non-ASCII
    and huge strings."""
    return st.one_of(
        st.sampled_from(valid).flatmap(mutated),
        st.text(max_size=80),
        st.text(URLSAFE + ".", min_size=1, max_size=200),
        st.text(st.characters(min_codepoint=0x80), min_size=1, max_size=40),
        st.integers(513, 6000).map(lambda n: "A" * n),
    ).filter(lambda t: t not in valid)

